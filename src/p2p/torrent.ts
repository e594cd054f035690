/**
 * Torrents of blobs, made deterministically from the blob alone: one file
 * named `sha256-<hex>`, fixed piece length, private, no date, no announce
 * list inside the info dictionary. Every node that holds the same verified
 * blob derives the same info hash, so no node has to trust another's
 * metadata to join the right swarm; the metadata a node downloads with still
 * comes from a trusted place (the tracker's metadata store, filled by nodes
 * that verified the blob from the origin, or d4fs-server for its own files)
 * and is checked here against the blob it claims to describe.
 */
import { corrupt } from '../errors';
import { hexOfDigest } from '../util/digest';
import { loadEngine, ParsedTorrent } from './esm';

/**
 * Piece length of every d4fs torrent. 256 KiB: a 50 MiB layer has 200
 * pieces, enough for six peers to trade from the first seconds; a 4 GiB
 * blob's piece list is 320 KiB of SHA-1s. Changing it changes every info hash.
 */
export const PIECE_LENGTH = 256 * 1024;

/** Largest torrent metadata accepted (a 64 GiB blob's piece list is 5 MiB). */
export const MAX_TORRENT_BYTES = 6 * 1024 * 1024;

/** Name of a blob inside its torrent and in the cache directory. */
export const torrentName = (digest: string): string => `sha256-${hexOfDigest(digest)}`;

/** Torrent metadata with the facts d4fs relies on. */
export interface BlobTorrent {
  digest: string;
  size: number;
  infoHash: string;
  /** The .torrent bytes. */
  bytes: Buffer;
  pieces: number;
}

/** Make the torrent of a verified blob at `path` (sha1 of every piece: about 0.1 s for 50 MiB). */
export async function makeTorrent(path: string, digest: string): Promise<BlobTorrent> {
  const engine = await loadEngine();
  const bytes = await new Promise<Uint8Array>((resolve, reject) =>
    engine.createTorrent(
      path,
      {
        name: torrentName(digest),
        pieceLength: PIECE_LENGTH,
        private: true,
        // outside the info dictionary, so they do not change the info hash; fixed anyway so the file is reproducible
        creationDate: new Date(1000),
        createdBy: 'd4fs',
        announceList: [],
        urlList: [],
      },
      (err, t) => (err ? reject(err) : resolve(t)),
    ),
  );
  return checkTorrent(Buffer.from(bytes), digest);
}

/**
 * Parse torrent metadata received from elsewhere and check that it is a d4fs
 * torrent of `digest` (and of `size`, when known): one file with the right
 * name, the fixed piece length, private. CORRUPT otherwise.
 */
export async function checkTorrent(bytes: Buffer, digest: string, size?: number): Promise<BlobTorrent> {
  const what = `torrent metadata of ${digest}`;
  if (bytes.length > MAX_TORRENT_BYTES) throw corrupt(`${what}: ${bytes.length} bytes is more than any blob needs`);
  const engine = await loadEngine();
  let t: ParsedTorrent;
  try {
    t = await engine.parseTorrent(bytes);
  } catch (e) {
    throw corrupt(`${what}: not a torrent: ${(e as Error).message}`);
  }
  const name = torrentName(digest);
  if (!t || typeof t.infoHash !== 'string' || !/^[a-f0-9]{40}$/.test(t.infoHash)) throw corrupt(`${what}: no info hash`);
  if (t.name !== name || t.files?.length !== 1 || t.files[0].path !== name) throw corrupt(`${what}: it describes ${JSON.stringify(String(t.name).slice(0, 80))}, not the single file ${name}`);
  if (t.pieceLength !== PIECE_LENGTH) throw corrupt(`${what}: piece length ${t.pieceLength}, d4fs torrents use ${PIECE_LENGTH}`);
  if (!t.private) throw corrupt(`${what}: not a private torrent`);
  if (!Number.isSafeInteger(t.length) || t.length < 0) throw corrupt(`${what}: bad length`);
  if (size !== undefined && size >= 0 && t.length !== size) throw corrupt(`${what}: ${t.length} bytes, the blob has ${size}`);
  const pieces = Math.max(1, Math.ceil(t.length / PIECE_LENGTH));
  if (t.pieces.length !== pieces) throw corrupt(`${what}: ${t.pieces.length} piece hashes for ${pieces} pieces`);
  return { digest, size: t.length, infoHash: t.infoHash, bytes, pieces };
}
