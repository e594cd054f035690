/**
 * Choice of the FUSE binding: fuse3 when its addon loads (it is built by
 * `npm ci` on this machine), fuse-native when asked for by option or
 * environment; wrong names are refused.
 */
import { chooseBinding, fuse3Available, fuse3LoadFailure, parseBinding } from './binding';

describe('FUSE binding choice', () => {
  const saved = process.env.D4FS_FUSE_BINDING;
  afterEach(() => {
    if (saved === undefined) delete process.env.D4FS_FUSE_BINDING;
    else process.env.D4FS_FUSE_BINDING = saved;
  });

  test('the libfuse3 addon loads here and is the default', () => {
    expect(fuse3LoadFailure()).toBeUndefined();
    expect(fuse3Available()).toBe(true);
    delete process.env.D4FS_FUSE_BINDING;
    expect(chooseBinding()).toBe('fuse3');
    expect((require('d4fs-fuse3') as { fuseVersion(): number }).fuseVersion()).toBeGreaterThanOrEqual(312);
  });

  test('an explicit choice wins over the environment, which wins over the default', () => {
    process.env.D4FS_FUSE_BINDING = 'fuse-native';
    expect(chooseBinding()).toBe('fuse-native');
    expect(chooseBinding('fuse3')).toBe('fuse3');
    process.env.D4FS_FUSE_BINDING = 'fuse3';
    expect(chooseBinding('fuse-native')).toBe('fuse-native');
  });

  test('unknown names are refused with the list of bindings', () => {
    expect(() => parseBinding('fuse4')).toThrow(/fuse3, fuse-native/);
    process.env.D4FS_FUSE_BINDING = 'libfuse';
    expect(() => chooseBinding()).toThrow(/D4FS_FUSE_BINDING must be one of/);
  });
});
