/**
 * d4fs as a library: what `ctr-cli` does, callable from a program.
 *
 *   import { convertImage, diffImages, patchImage, verifyCdimg } from 'd4fs';
 *   await convertImage({ image: 'oci:img/app-v1', output: 'app-1.cdimg' });
 *
 * Every operation takes one options object and returns a result object (the
 * same ones the CLI prints with --json); failures are D4fsError with a kind
 * (errors.ts: the one table of kinds → exit codes, gRPC and HTTP codes).
 * Commands in src/commands are thin wrappers over these functions.
 */

// errors
export { D4fsError, EXIT_CODES, exitCodeOf, toD4fsError } from './errors';
export type { ErrorKind } from './errors';

// .cdimg files: convert, open, verify, unpack
export { convertImage } from './convert/convert';
export type { ConvertOptions, ConvertResult, ProgressEvent } from './convert/convert';
export { CdimgReader } from './format/reader';
export { verifyCdimg } from './unpack/verify';
export type { VerifyResult } from './unpack/verify';
export { unpackImage } from './unpack/unpack';
export type { UnpackOptions, UnpackResult } from './unpack/unpack';

// deltas: diff, merge, patch; back to OCI
export { diffImages } from './delta/diff';
export type { CodecChoice, DiffOptions } from './delta/diff';
export { mergeDeltas } from './delta/merge';
export type { MergeOptions } from './delta/merge';
export { patchImage } from './delta/patch';
export type { PatchOptions, PatchResult } from './delta/patch';
export type { DeltaSummary } from './delta/summary';
export { exportImage } from './oci/export';
export type { ExportResult } from './oci/export';

// the local store and containerd
export { LocalStore } from './store/store';
export { loadImage, unloadImage } from './containerd/load';
export type { LoadImageOptions, LoadImageResult, UnloadImageOptions } from './containerd/load';

// distribution: d4fs-server and OCI registries
export { pushToServer } from './distribution/push';
export type { ServerPushOptions, ServerPushResult } from './distribution/push';
export { pullFromServer } from './distribution/pull';
export type { PullResult, ServerPullOptions } from './distribution/pull';
export { pullFromRegistry, pushToRegistry } from './distribution/registry';
export type { RegistryPullOptions, RegistryPushOptions, RegistryPushResult } from './distribution/registry';
export { publishImage } from './distribution/publish';
export type { PublishOptions, PublishResult } from './distribution/publish';
export { D4fsServer } from './server/server';
export type { ServerOptions } from './server/server';

// registry-to-registry updates
export { diffImageSets } from './regsync/diff';
export type { DiffOptions as RegistryDiffOptions, DiffReport as RegistryDiffReport } from './regsync/diff';
export { applyPatch } from './regsync/apply';
export type { ApplyOptions as RegistryApplyOptions, ApplyReport as RegistryApplyReport } from './regsync/apply';

// signatures
export { generateKeyPair, loadPolicy, loadSigningKey, loadVerifyKey, signFile } from './signing';

// fleets
export { PeerDaemon } from './p2p/peer';
export type { PeerOptions, PeerStatus } from './p2p/peer';
