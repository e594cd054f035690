/** Options for talking to a registry; shared by every command that does. */
export interface RegistryOptions {
  /** "user:pass" given on the command line; wins over the docker config. */
  creds?: string;
  /** Registry token given directly (bearer). */
  registryToken?: string;
  /** false: accept self-signed certificates and allow plain HTTP. */
  tlsVerify?: boolean;
  /** Path of a docker config.json (default: $DOCKER_CONFIG/config.json, ~/.docker/config.json, $REGISTRY_AUTH_FILE). */
  authFile?: string;
  /** The flag named in authentication errors (default "--creds"; e.g. "--dest-creds"). */
  credsFlag?: string;
  /**
   * Base URL of the node's d4fs-peer (pull-through mirror, e.g.
   * http://127.0.0.1:5050): manifests and blobs are read through it first
   * (`?ns=<registry>`, as containerd asks mirrors), the registry itself
   * when the mirror is unreachable or fails. Writes always go to the registry.
   */
  mirror?: string;
  /** User-Agent header. */
  userAgent?: string;
}
