/**
 * The BitTorrent engine (WebTorrent, bittorrent-tracker, create-torrent,
 * parse-torrent) ships as ES modules only. This package compiles to
 * CommonJS, where TypeScript turns `import()` into `require()`, which cannot
 * load them; a real dynamic import is kept out of TypeScript's reach here.
 * Only the peer and tracker processes load the engine (never the CLI's other
 * commands, never a jest worker: jest's module sandbox has no dynamic import).
 *
 * The types below describe the part of the engine's API d4fs uses; the
 * packages carry no TypeScript declarations of their own.
 */
import type { EventEmitter } from 'node:events';
import type * as http from 'node:http';

const realImport = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<Record<string, unknown>>;

/** A peer connection of the wire protocol. */
export interface Wire extends EventEmitter {
  peerId: string | null;
  remoteAddress?: string;
  remotePort?: number;
  destroy(): void;
}

export interface Torrent extends EventEmitter {
  infoHash: string;
  name: string;
  length: number;
  progress: number;
  downloaded: number;
  uploaded: number;
  received: number;
  numPeers: number;
  done: boolean;
  ready: boolean;
  destroyed: boolean;
  wires: Wire[];
  bitfield?: { get(i: number): boolean };
  pieceLength: number;
  pieces: unknown[];
  destroy(opts: { destroyStore?: boolean }, cb?: (err?: Error) => void): void;
  removePeer(peer: string | Wire): void;
}

export interface WebTorrentClient extends EventEmitter {
  torrents: Torrent[];
  torrentPort: number;
  peerId: string;
  add(torrent: Uint8Array, opts: Record<string, unknown>, onTorrent?: (t: Torrent) => void): Torrent;
  get(infoHash: string): Promise<Torrent | null>;
  remove(infoHash: string, opts: { destroyStore?: boolean }, cb?: (err?: Error) => void): void;
  destroy(cb?: (err?: Error) => void): void;
  address(): { address: string; family: string; port: number } | null;
}

export type WebTorrentCtor = new (opts: Record<string, unknown>) => WebTorrentClient;

export interface TrackerServer extends EventEmitter {
  onHttpRequest(req: http.IncomingMessage, res: http.ServerResponse, opts?: Record<string, unknown>): void;
  close(cb?: () => void): void;
  torrents: Record<string, { complete: number; incomplete: number; peers: { keys: string[] } }>;
}

export type TrackerServerCtor = new (opts: Record<string, unknown>) => TrackerServer;

export interface ParsedTorrent {
  infoHash: string;
  name: string;
  length: number;
  pieceLength: number;
  lastPieceLength: number;
  pieces: string[];
  private?: boolean;
  files: { path: string; name: string; length: number; offset: number }[];
  info?: Record<string, unknown>;
}

export interface Engine {
  WebTorrent: WebTorrentCtor;
  TrackerServer: TrackerServerCtor;
  createTorrent(input: string | Buffer, opts: Record<string, unknown>, cb: (err: Error | null, torrent: Uint8Array) => void): void;
  parseTorrent(torrent: Uint8Array): Promise<ParsedTorrent>;
}

let loading: Promise<Engine> | undefined;

/** Load the engine's modules once per process. */
export function loadEngine(): Promise<Engine> {
  loading ??= (async () => {
    const [wt, tracker, create, parse] = await Promise.all([realImport('webtorrent'), realImport('bittorrent-tracker'), realImport('create-torrent'), realImport('parse-torrent')]);
    return {
      WebTorrent: wt.default as WebTorrentCtor,
      TrackerServer: tracker.Server as TrackerServerCtor,
      createTorrent: create.default as Engine['createTorrent'],
      parseTorrent: parse.default as Engine['parseTorrent'],
    };
  })();
  return loading;
}
