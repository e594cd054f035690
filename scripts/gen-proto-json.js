#!/usr/bin/env node
// Regenerates proto/containerd.json from the .proto files under proto/containerd
// (field names as written). Run it after editing a .proto file:
//   node scripts/gen-proto-json.js
// src/grpc/services.test.ts fails while the JSON and the .proto files disagree.
'use strict';
const path = require('node:path');
const fs = require('node:fs');

const ROOT = path.join(__dirname, '..');
const FILES = ['containerd/content.proto', 'containerd/images.proto', 'containerd/leases.proto', 'containerd/snapshots.proto'];

/** The protobufjs JSON of the service definitions d4fs speaks (as a string, with a final newline). */
function protoJson() {
  const protobuf = require('protobufjs');
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(ROOT, 'proto', target);
  root.loadSync(FILES, { keepCase: true });
  root.resolveAll();
  return JSON.stringify(root.toJSON(), null, 1) + '\n';
}

module.exports = { protoJson, FILES };

if (require.main === module) {
  fs.writeFileSync(path.join(ROOT, 'proto', 'containerd.json'), protoJson());
  process.stdout.write('wrote proto/containerd.json\n');
}
