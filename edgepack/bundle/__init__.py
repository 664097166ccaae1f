"""Bundles: one folder per device profile with the picked GGUF, its adapters, the report and a manifest.

``write_bundle`` copies the files into a temp folder beside the target, writes ``manifest.json`` (schema in
docs/manifest.md) and renames the folder into place, so a bundle is either complete or absent. Everything in
it is a pure function of its inputs: no timestamps, no absolute paths, sorted keys, so the same inputs give
byte-identical bundles (and archives: tar entries carry mtime 0 and root ownership, zip entries 1980-01-01).

``verify_bundle`` checks a bundle (folder, .tar.zst or .zip): the manifest's schema, every listed file's size
and sha256, that nothing unlisted is there, and that the GGUF (with each adapter) loads and evaluates a few
tokens in llama.cpp.

``manifest.py`` (schema, facts, digest), ``write.py`` (write and pack), ``verify.py`` (check).
"""

from .manifest import (ARCHIVE_SUFFIXES, MANIFEST, SCHEMA, SCHEMA_VERSION, BundleAdapter, BundleResult, bundle_hash,
                       gguf_facts, manifest_digest, mmproj_facts, read_manifest, seal, tool_versions)
from .verify import VerifyResult, load_logits, verify_bundle
from .write import pack, write_bundle

__all__ = ["BundleAdapter", "BundleResult", "VerifyResult", "write_bundle", "pack", "verify_bundle", "gguf_facts",
           "mmproj_facts", "tool_versions", "bundle_hash", "read_manifest", "seal", "manifest_digest", "load_logits",
           "SCHEMA", "SCHEMA_VERSION", "MANIFEST", "ARCHIVE_SUFFIXES"]
