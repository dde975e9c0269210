# Writes tokenizer.json: the simulator's tokenizer (shardgate-sim, sim/src/tokens.rs)
# as a Hugging Face WordLevel tokenizer, for words "0".."1999" (a number's id is the
# number) and the chat roles (id = top 31 bits of xxh3-64 of the word), split on
# whitespace. Needs the `xxhash` package: python3 make_tokenizer.py
import json, xxhash
vocab = {str(i): i for i in range(2000)}
for role in ("system", "user", "assistant"):
    vocab[role] = xxhash.xxh3_64_intdigest(role.encode()) >> 33
vocab["[UNK]"] = 2000
tok = {
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
    "normalizer": None,
    "pre_tokenizer": {"type": "WhitespaceSplit"},
    "post_processor": None, "decoder": None,
    "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
}
with open("tokenizer.json", "w") as f:
    json.dump(tok, f, separators=(",", ":"))
print({r: vocab[r] for r in ("system", "user", "assistant")})
