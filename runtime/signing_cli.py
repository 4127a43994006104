"""``oat-edge keygen`` and ``oat-edge sign`` (Ed25519 bundle signatures, oat_edge.bundle.signature).
Nothing heavy at import time."""

from __future__ import annotations


def register(subparsers) -> None:
    from oat_edge import cliargs

    p = subparsers.add_parser(
        "keygen", help="make an Ed25519 key pair for signing bundles",
        description="Write a new Ed25519 key pair: KEY (private, PEM, mode 0600: keep it off the robot) and "
        "KEY.pub (public: give it to the robots, e.g. Runtime(bundle, trusted_keys=['KEY.pub'])).")
    cliargs.add_out(p, "KEY", "private key file to write (KEY.pub is written beside it)", required=True)
    cliargs.add_force(p, "overwrite existing key files")
    p.set_defaults(func=run_keygen)

    p = subparsers.add_parser(
        "sign", help="sign a bundle's manifest (which hashes every file) with an Ed25519 key",
        description="Check the bundle (schema, files, sha256, FiLM tables, latency profiles), then write "
        "BUNDLE/manifest.sig: an Ed25519 signature over manifest.json, which holds the sha256 of every file, and "
        "over the sha256 of each latency profile. A runtime given trusted keys accepts only bundles signed by one "
        "of them, and uses only the latency profiles the signature covers.")
    p.add_argument("bundle", metavar="BUNDLE")
    # --key is every other command's trusted public key; the private key has its own flag.
    p.add_argument("--private-key", metavar="KEY", dest="key", help="private key file from `oat-edge keygen` (required)")
    cliargs.alias(p, "--key", "--private-key", "key", metavar="KEY")
    p.set_defaults(func=run_sign)


def run_keygen(args) -> int:
    from oat_edge.bundle.signature import generate_key

    info = generate_key(args.out, force=args.force)
    print(f"wrote {info['private']} (private, keep it secret) and {info['public']} (public); key id {info['key_id']}")
    return 0


def run_sign(args) -> int:
    from oat_edge.bundle.manifest import sign_bundle
    from oat_edge.bundle.names import SIGNATURE_FILE

    if args.key is None:  # not required by the parser: the old spelling --key also sets it
        from oat_edge.errors import ConfigError

        raise ConfigError("--private-key KEY is required: the private key file from `oat-edge keygen`")
    sig = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle}: {SIGNATURE_FILE} by key {sig['key_id']} (manifest sha256 {sig['manifest_sha256'][:16]}...)")
    return 0
