/** Linux errno values, negated as FUSE handlers return them. */
export const Errno = {
  EPERM: -1,
  ENOENT: -2,
  EIO: -5,
  EBADF: -9,
  EACCES: -13,
  ENOTDIR: -20,
  EISDIR: -21,
  EINVAL: -22,
  EROFS: -30,
  ERANGE: -34,
  ENOSYS: -38,
  ENODATA: -61,
  ENOTSUP: -95,
  ETIMEDOUT: -110,
} as const;
