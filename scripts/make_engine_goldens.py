#!/usr/bin/env python3
"""Reference outputs for srlm's engine tests, from Hugging Face transformers.

What it writes (all under crates/srlm-engine/tests/goldens/):
  tokenizer.json    token ids of ~240 varied strings, tokenized by transformers loading the
                    SmolLM2-135M-Instruct Q4_1 GGUF (the model srlm fetches by default)
  chat.json         chat prompts rendered by `apply_chat_template` from the same GGUF
  logits.safetensors + logits.json
                    transformers' logits (GGUF dequantized to f32) at every position of 3 prompts:
                    per position the log-sum-exp, the top 16 ids with their logits, and the logits
                    of every 61st vocabulary id; plus 32 greedy tokens per prompt
  tiny-llama/, tiny-qwen2/
                    random tiny Hugging Face model folders (safetensors, config, a small byte-level
                    BPE tokenizer) and transformers' logits for them: exercises untied heads,
                    Llama 3 rope scaling, GQA and Qwen2's q/k/v biases

How to regenerate:
  python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 transformers==5.24.0 gguf==0.19.0 accelerate \
      safetensors tokenizers numpy
  SRLM_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf .venv/bin/python scripts/make_engine_goldens.py
(`srlm fetch` prints the path of the GGUF it downloaded.)
"""
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

OUT = Path(__file__).resolve().parent.parent / "crates/srlm-engine/tests/goldens"
GGUF = Path(os.environ["SRLM_GGUF"])


def tokenizer_strings():
    base = [
        "Hello world", " Hello world", "hello  world", "Hello, world!", "HELLO WORLD", "",
        " ", "  ", "\n", "\n\n", "\n\n\n", "\t", "\t\t  \n", " \n ", "a\r\nb", "trailing spaces   ",
        "   leading spaces", "mixed \t tabs\tand spaces", "line1\nline2\n\nline4", "x" * 50,
        "don't", "I'LL", "we're", "they've", "she'd", "it's", "You'd've",
        "1", "12", "123", "1234", "12345", "1234567890", "3.14159", "-42", "1e10", "1,000,000",
        "0x1F", "2024-06-01", "v1.2.3", "$19.99", "50%", "1/2", "10^6", "99 bottles",
        "café", "naïve", "résumé", "Ångström", "Straße", "İstanbul", "ﬁ ligature", "e\u0301",
        "日本語のテキスト", "中文文本测试", "한국어 텍스트", "Привет, мир", "Γειά σου κόσμε",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt",
        "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "I ❤️ Rust 🦀", "∑∫∂√∞≈≠", "→←↑↓", "©®™", "½ ¾",
        "def f(x):\n    return x * 2\n", "fn main() {\n    println!(\"hi\");\n}",
        "for (int i = 0; i < n; ++i) { a[i] += 1; }", "<div class=\"x\">text</div>",
        "SELECT * FROM users WHERE id = 1;", "import numpy as np", "x = [1, 2, 3]\ny = {'a': 1}",
        "    indented\n        more", "#include <stdio.h>", "// comment", "/* block */", "`code`",
        "```python\nprint('hi')\n```", "https://example.com/path?q=1&r=2", "user@example.com",
        "C:\\Users\\name", "~/.config/file.toml", "a_b_c", "camelCaseWord", "snake_case_word",
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi there<|im_end|>\n",
        "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>assistant\n",
        "text<|endoftext|>more", "<repo_name>srlm<file_sep>", "<|im_start", "im_end|>", "<|unknown|>",
        "Score: 5", "Score: 4.5", "score - 3", "Score:5\n", "The answer is 42.",
        "!!!???...", "---", "***", "...", "\u00a0non-breaking", "zero\u200bwidth", "\ufeffBOM",
        "tab\there", "quote \"inside\"", "apostrophe's", "(parens) [brackets] {braces}",
    ]
    rng = random.Random(0)
    out = list(base)
    # Combinations, so runs of whitespace meet words, numbers and specials.
    for i in range(140):
        a, b = rng.choice(base), rng.choice(base)
        sep = rng.choice([" ", "\n", "  ", "\t", "", "\n\n", " \n"])
        out.append(a + sep + b)
    return out


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    strings = tokenizer_strings()
    cases = [{"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]} for s in strings]
    (OUT / "tokenizer.json").write_text(json.dumps({"cases": cases}, ensure_ascii=False, indent=0))
    print(f"tokenizer: {len(cases)} strings")

    chats = [
        {"messages": [{"role": "user", "content": "What is 2+2?"}], "add_generation_prompt": True},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "add_generation_prompt": True},
        {"messages": [{"role": "user", "content": "Write a haiku."},
                      {"role": "assistant", "content": "Leaves fall\nquietly."},
                      {"role": "user", "content": "Another, please 🍂"}], "add_generation_prompt": False},
    ]
    for c in chats:
        c["rendered"] = tok.apply_chat_template(c["messages"], tokenize=False,
                                                add_generation_prompt=c["add_generation_prompt"])
    (OUT / "chat.json").write_text(json.dumps({"chats": chats}, ensure_ascii=False, indent=1))

    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name,
                                                 dtype=torch.float32)
    model.eval()
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                tokenize=False, add_generation_prompt=True),
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "Once upon a time, in a small village by the sea, there lived",
    ]
    tensors, meta = {}, {"prompts": [], "stride": 61, "top": 16}
    vocab = model.config.vocab_size
    stride_ids = np.arange(0, vocab, 61)
    for i, p in enumerate(prompts):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float().numpy()  # (t, vocab)
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                    eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
        top = np.argsort(-logits, axis=1)[:, :16]
        tensors[f"p{i}.lse"] = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        tensors[f"p{i}.top_ids"] = top.astype(np.int64)
        tensors[f"p{i}.top_logits"] = np.take_along_axis(logits, top, 1)
        tensors[f"p{i}.strided"] = logits[:, stride_ids]
        meta["prompts"].append({"text": p, "ids": ids, "greedy": greedy})
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(OUT / "logits.safetensors"))
    (OUT / "logits.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    print("logits: done")

    make_tiny("tiny-llama", arch="llama")
    make_tiny("tiny-qwen2", arch="qwen2")


def tiny_tokenizer():
    """A small byte-level BPE with a chat template, trained on a fixed text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog " * 3, "hello world, how are you today?",
            "def main():\n    return 0\n", "score: 5 points for the answer"]
    t.train_from_iterator(text, trainer)
    return t


def make_tiny(name, arch):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0 if arch == "llama" else 1)
    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    tk = tiny_tokenizer()
    tk.save(str(d / "tokenizer.json"))
    common = dict(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                  bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=False, rope_theta=500000.0,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**common, tie_word_embeddings=True, rope_theta=10000.0)
        model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():  # larger than the default init, so differences show
            p.normal_(0.0, 0.2)
    model.eval()
    model.save_pretrained(str(d), safe_serialization=True)
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "chat_template": template, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=1))
    ids = [[5, 17, 42, 99, 7, 250, 3, 64, 128, 11], [200, 1, 33, 4, 180, 77, 9, 15, 260, 2]]
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits.float().numpy()
    save_file({"ids": np.array(ids, dtype=np.int64), "logits": logits}, str(d / "expected_logits.safetensors"))
    print(f"{name}: done")


if __name__ == "__main__":
    main()
