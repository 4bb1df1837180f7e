"""The on-disk contract: the sample schema, its geometry, tar shards, per-member checksums and
manifests. Imports only the package's plumbing (errors, temporaries), never convert/, stream/ or train/."""
