export * from './types';
export { readTar, TarEntry, TarReadOptions, parsePaxTime, headerChecksumMatches } from './reader';
export { encodeTarHeader, tarPadding, TAR_END, buildTar } from './writer';
