export type TarType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  /** Path as stored (after pax path / GNU long name). */
  name: string;
  type: TarType;
  /** Permission bits including setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  uname: string;
  gname: string;
  /** Data size (regular files; 0 for others). */
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Hard link or symlink target. */
  linkname: string;
  devmajor: number;
  devminor: number;
  /** Extended attributes from pax records (binary-safe). */
  xattrs: Map<string, Buffer>;
}
