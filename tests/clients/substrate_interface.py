"""Drives fake-node with py substrate-interface, as tests/client_libraries.rs expects.

Usage: python substrate_interface.py WS_URL OLD_BLOCK_HASH LAST_BLOCK_NUMBER

Prints one JSON object per line on stdout:
  {"event": "connected", "library", "version", "chain", "specName", "specVersion"}
  {"event": "header", "hash", "number", "parentHash"}      get_block_header(OLD_BLOCK_HASH)
  {"event": "block", "hash", "number", "extrinsics"}       get_block(OLD_BLOCK_HASH)
  {"event": "ready"}                                      when the finalized-heads subscription starts
  {"event": "finalized", "number", "hash", "release": {"major", "minor", "patch"}}  per finalized head
  {"event": "release", "at", "number", "release": {...}}  at OLD_BLOCK_HASH, after the last head
  {"event": "error", "message"}                           then exit 1
It exits 0 after the finalized head LAST_BLOCK_NUMBER. Releases of followed heads are read over a
second connection, because substrate-interface's subscription loop owns the first one.
"""

import json
import sys
import traceback
from importlib.metadata import version

from substrateinterface import SubstrateInterface


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def fail(message):
    emit("error", message=message)
    sys.exit(1)


def release_at(substrate, block_hash):
    """The release at `block_hash`, decoded by field name through that block's metadata."""
    value = substrate.query("Environment", "CurrentReleaseVersion", block_hash=block_hash).value
    return {name: value[name] for name in ("major", "minor", "patch")}


def main(url, old_hash, last_number):
    substrate = SubstrateInterface(url=url)
    reader = SubstrateInterface(url=url)
    runtime = substrate.get_block_runtime_version(None)
    emit(
        "connected",
        library="substrate-interface",
        version=version("substrate-interface"),
        chain=substrate.chain,
        specName=runtime["specName"],
        specVersion=runtime["specVersion"],
    )

    header = substrate.get_block_header(old_hash)["header"]
    emit("header", hash=header["hash"], number=header["number"], parentHash=header["parentHash"])
    block = substrate.get_block(old_hash)
    emit(
        "block",
        hash=block["header"]["hash"],
        number=block["header"]["number"],
        extrinsics=len(block["extrinsics"]),
    )

    def on_header(obj, update_nr, subscription_id):
        if update_nr == 0:
            emit("ready")
        number = obj["header"]["number"]
        block_hash = reader.get_block_hash(number)
        emit("finalized", number=number, hash=block_hash, release=release_at(reader, block_hash))
        if number >= last_number:
            return number  # a return value ends the subscription

    substrate.subscribe_block_headers(on_header, finalized_only=True)
    # Read history last, so the old block's runtime is no longer the current one.
    emit("release", at=old_hash, number=header["number"], release=release_at(reader, old_hash))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        fail("usage: substrate_interface.py WS_URL OLD_BLOCK_HASH LAST_BLOCK_NUMBER")
    try:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    except Exception:  # every failure ends as one structured line for the test to show
        fail(traceback.format_exc())
