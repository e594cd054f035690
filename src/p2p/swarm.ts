/**
 * The node's BitTorrent peer: one WebTorrent client, TCP only, in private
 * swarms (no DHT, no UPnP/NAT-PMP, no peer exchange, no web seeds, no public
 * trackers: the only announce URLs are the fleet's tracker, with the node's
 * token). It seeds every blob the cache holds and downloads blobs whose
 * torrent metadata came from a trusted place.
 *
 * Pieces are checked by the engine against the metadata's SHA-1s (a
 * transport check); a peer whose pieces fail that check is dropped and
 * refused from then on (by peer id). The whole blob's sha256 is checked by
 * the caller before the blob is used or committed.
 */
import type { Logger } from 'pino';
import { loadEngine, Torrent, WebTorrentClient, Wire } from './esm';
import { BlobTorrent, PIECE_LENGTH } from './torrent';

export interface SwarmOptions {
  /** TCP port for incoming peer connections (0: any). */
  torrentPort?: number;
  /** Announce URLs of the tracker(s), token included. */
  announce: string[];
  /** No progress for this long: the download is stalled (ms). */
  stallMs: number;
  /** BEP 14 local service discovery (LAN multicast) as well as the tracker. */
  lsd?: boolean;
  /** Upload limit in bytes/s (-1: none). */
  uploadLimit?: number;
  log: Logger;
}

export interface SwarmDownload {
  status: 'done' | 'stalled';
  /** Verified bytes received from peers. */
  fromPeers: number;
  /** Pieces not held when the download stopped (empty when done). */
  missing: number[];
  /** Peers that were dropped for bad pieces. */
  dropped: number;
}

export interface SwarmStats {
  port: number;
  peerId: string;
  torrents: number;
  seeding: number;
  downloading: number;
  peers: number;
  uploaded: number;
  downloaded: number;
  droppedPeers: number;
}

/** Peers whose pieces failed verification (by peer id): never talked to again. */
class BadPeers {
  private readonly strikes = new Map<string, number>();
  readonly banned = new Set<string>();
  strike(peerId: string, soleSource: boolean): boolean {
    const n = (this.strikes.get(peerId) ?? 0) + 1;
    this.strikes.set(peerId, n);
    if (soleSource || n >= 2) this.banned.add(peerId);
    return this.banned.has(peerId);
  }
}

export class Swarm {
  private readonly bad = new BadPeers();
  private droppedPeers = 0;

  private constructor(private readonly client: WebTorrentClient, private readonly opts: SwarmOptions) {
    client.on('error', (e: Error) => opts.log.error({ err: e.message }, 'bittorrent engine error'));
  }

  static async start(opts: SwarmOptions): Promise<Swarm> {
    const { WebTorrent } = await loadEngine();
    const client = new WebTorrent({
      dht: false,
      lsd: !!opts.lsd,
      utPex: false,
      natUpnp: false,
      natPmp: false,
      utp: false,
      webSeeds: false,
      tracker: { wrtc: false },
      torrentPort: opts.torrentPort ?? 0,
      uploadLimit: opts.uploadLimit ?? -1,
    });
    await new Promise<void>((resolve, reject) => {
      if (client.address()) return resolve();
      client.once('listening', () => resolve());
      client.once('error', reject);
    });
    return new Swarm(client, opts);
  }

  get port(): number {
    return this.client.address()?.port ?? 0;
  }

  private watch(t: Torrent): void {
    const sources = new Map<number, Set<Wire>>();
    t.on('wire', (wire: Wire) => {
      if (wire.peerId && this.bad.banned.has(wire.peerId)) {
        wire.destroy();
        return;
      }
      wire.on('piece', (index: number) => {
        let s = sources.get(index);
        if (!s) sources.set(index, (s = new Set()));
        s.add(wire);
      });
    });
    t.on('verified', (index: number) => sources.delete(index));
    t.on('warning', (w: Error) => {
      const m = /Piece (\d+) failed verification/.exec(w?.message ?? '');
      if (!m) return;
      const index = Number(m[1]);
      const from = [...(sources.get(index) ?? [])];
      sources.delete(index);
      for (const wire of from) {
        if (!wire.peerId) continue;
        if (this.bad.strike(wire.peerId, from.length === 1)) {
          this.droppedPeers++;
          this.opts.log.warn({ blob: t.name, piece: index, peer: `${wire.remoteAddress}:${wire.remotePort}` }, 'peer sent a piece that fails verification: dropped');
          wire.destroy();
        }
      }
    });
  }

  private async existing(infoHash: string): Promise<Torrent | null> {
    return this.client.get(infoHash);
  }

  /** Seed a verified blob held in `dir` (the cache's blob directory). */
  async seed(t: BlobTorrent, dir: string): Promise<void> {
    const have = await this.existing(t.infoHash);
    if (have) return;
    await new Promise<void>((resolve, reject) => {
      const torrent = this.client.add(t.bytes, { path: dir, announce: this.opts.announce, skipVerify: true });
      this.watch(torrent);
      torrent.once('ready', () => resolve());
      torrent.once('error', (e: Error) => reject(e));
    });
  }

  /** Stop seeding (the file stays). */
  async stop(infoHash: string): Promise<void> {
    const t = await this.existing(infoHash);
    if (!t) return;
    await new Promise<void>((resolve) => this.client.remove(infoHash, { destroyStore: false }, () => resolve()));
  }

  /**
   * Download a blob from the swarm into `dir` (the file keeps the torrent's
   * name). Resolves when it is complete (`done`; it then goes on seeding) or
   * when nothing arrived for `stallMs` (`stalled`; the torrent is removed so
   * that the caller may fill the missing pieces from the origin).
   */
  async download(t: BlobTorrent, dir: string, onProgress?: (have: number, total: number) => void): Promise<SwarmDownload> {
    const prior = await this.existing(t.infoHash);
    if (prior) await this.stop(t.infoHash);
    const droppedBefore = this.droppedPeers;
    const torrent = this.client.add(t.bytes, { path: dir, announce: this.opts.announce });
    this.watch(torrent);
    return new Promise<SwarmDownload>((resolve) => {
      let last = Date.now();
      let settled = false;
      const finish = async (status: 'done' | 'stalled'): Promise<void> => {
        if (settled) return;
        settled = true;
        clearInterval(timer);
        const missing: number[] = [];
        if (status === 'stalled') {
          for (let i = 0; i < t.pieces; i++) if (!torrent.bitfield?.get(i)) missing.push(i);
          await this.stop(t.infoHash);
        }
        resolve({ status, fromPeers: torrent.downloaded, missing, dropped: this.droppedPeers - droppedBefore });
      };
      // progress is piece data held, not bytes on the wire: the engine's 'download' event counts every byte
      // received (handshakes, bitfields, keep-alives), so a peer reconnecting after it was dropped, or one
      // sending anything but pieces, would keep a dead download from ever stalling
      let held = 0;
      const timer = setInterval(() => {
        if (settled) return;
        const now = torrent.downloaded;
        if (now > held) {
          held = now;
          last = Date.now();
        }
        if (Date.now() - last > this.opts.stallMs) void finish('stalled');
      }, Math.min(500, this.opts.stallMs));
      torrent.on('download', () => onProgress?.(Math.min(t.size, Math.round(torrent.progress * t.size)), t.size));
      torrent.on('verified', () => (last = Date.now()));
      torrent.once('ready', () => (last = Date.now()));
      torrent.once('done', () => void finish('done'));
      torrent.once('error', (e: Error) => {
        this.opts.log.warn({ blob: t.digest, err: e.message }, 'swarm download failed');
        void finish('stalled');
      });
      if (torrent.done) void finish('done');
    });
  }

  /** Byte ranges [start, end] of pieces, merged where adjacent. */
  static rangesOf(pieces: number[], size: number): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (const p of [...pieces].sort((a, b) => a - b)) {
      const start = p * PIECE_LENGTH;
      const end = Math.min(size, start + PIECE_LENGTH) - 1;
      if (start > end) continue;
      const prev = out[out.length - 1];
      if (prev && prev[1] + 1 === start) prev[1] = end;
      else out.push([start, end]);
    }
    return out;
  }

  stats(): SwarmStats {
    let peers = 0;
    let seeding = 0;
    let downloading = 0;
    let uploaded = 0;
    let downloaded = 0;
    for (const t of this.client.torrents) {
      peers += t.numPeers;
      if (t.done) seeding++;
      else downloading++;
      uploaded += t.uploaded;
      downloaded += t.downloaded;
    }
    return { port: this.port, peerId: this.client.peerId, torrents: this.client.torrents.length, seeding, downloading, peers, uploaded, downloaded, droppedPeers: this.droppedPeers };
  }

  /** Per-torrent figures for the status page. */
  torrentStats(): Array<{ name: string; infoHash: string; peers: number; uploaded: number; downloaded: number; done: boolean }> {
    return this.client.torrents.map((t) => ({ name: t.name, infoHash: t.infoHash, peers: t.numPeers, uploaded: t.uploaded, downloaded: t.downloaded, done: t.done }));
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.client.destroy(() => resolve()));
  }
}
