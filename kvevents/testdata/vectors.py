# Regenerate: python3 -m venv v && v/bin/pip install cbor2 msgpack && v/bin/python vectors.py
# (its output is pasted into src/tests.rs).
# Test vectors for kvevents/src/tests.rs: vLLM's sha256_cbor block hashing
# (hashlib.sha256(cbor2.dumps(obj, canonical=True))) and msgspec-style msgpack.
import cbor2, hashlib, msgpack
def h(o): return hashlib.sha256(cbor2.dumps(o, canonical=True)).digest()
none = h("vllm-none-hash")
print("none", none.hex())
toks = list(range(1, 33))
b0 = h((none, tuple(toks[:16]), None)); b1 = h((b0, tuple(toks[16:]), None))
print("b0", b0.hex(), hex(int.from_bytes(b0, "big") & (2**64-1)))
print("b1", b1.hex(), hex(int.from_bytes(b1, "big") & (2**64-1)))
big = [100000 + i * 1000 for i in range(16)]
c0 = h((none, tuple(big), ("my-lora",)))
print("c0 lora", hex(int.from_bytes(c0, "big") & (2**64-1)))
s = h("42"); d0 = h((s, tuple([5]*16), None))
print("seed42", hex(int.from_bytes(d0, "big") & (2**64-1)))
# array-like batch, as msgspec array_like=True, tag first
arr = [1.5, [["BlockStored", [1, 2], None, list(range(32)), 16, None, "GPU"], ["BlockRemoved", [2], "GPU"], ["AllBlocksCleared"]], 0]
print("arr", msgpack.packb(arr, use_bin_type=True).hex())
mp = {"ts": 2.0, "events": [{"type": "BlockStored", "block_hashes": [b0], "parent_block_hash": None, "token_ids": toks[:16], "block_size": 16, "lora_id": None, "medium": "GPU", "lora_name": None}, {"type": "BlockRemoved", "block_hashes": [-5], "medium": None}]}
print("map", msgpack.packb(mp, use_bin_type=True).hex())
