'use strict';
// Loads the compiled binding (build/Release/d4fs_fuse3.node, built by node-gyp at install).
const path = require('node:path');
module.exports = require(path.join(__dirname, 'build', 'Release', 'd4fs_fuse3.node'));
module.exports.EV = Object.freeze({ MOUNTED: 1, INIT: 2, CLOSED: 3 });
module.exports.RQ = Object.freeze({
  LOOKUP: 10, GETATTR: 11, READLINK: 12, READ: 13, READDIR: 14, READDIRPLUS: 15, STATFS: 16, GETXATTR: 17, LISTXATTR: 18,
});
