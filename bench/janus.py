"""Imported Janus-Pro on this CPU: one image (576 image tokens, classifier-free guidance) through Tessera's
bundle at each precision, beside transformers' `generate` on the same weights, in one run.

    nice -n 19 python bench/janus.py --shape 1b --out janus-bench.json

The checkpoint is random (training/importers/janus_random.py; nothing is downloaded) with the language
model, VQ model and generation head of the chosen shape. Each import and each decode runs in its own
process, which reports its peak RSS. Decoding is the engine's loop (CFG in the batch, temperature 1,
top-p 1, seeded sampling); transformers runs `generate(generation_mode="image")` with the same guidance
in float32. Roofline: bytes a decode step must read (the graph's weights, less the embedding tables of
which it gathers a few rows) over the memory bandwidth measured here (bench/decode.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a watercolor painting of a lighthouse on a cliff at sunset"
CFG = 5.0


def _child(code: str) -> dict:
    """Run python code in a fresh process; it prints one JSON line, to which its peak RSS is added (VmHWM:
    getrusage's ru_maxrss would carry over the forking parent's peak across exec)."""
    tail = ("import json, re\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
            "out['peak_rss_mb'] = int(hwm) / 1024\n"
            "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", f"{code}\n{tail}"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def import_bundle(hf: Path, out: Path, precision: str) -> dict:
    return _child(f"""
import time
from training.importers.janus import import_janus
t = time.perf_counter()
import_janus({str(hf)!r}, {str(out)!r}, {precision!r}, force=True, log=lambda *_: None)
out = {{'import_s': time.perf_counter() - t}}""")


def tessera_image(bundle: Path, threads: int | None) -> dict:
    return _child(f"""
import time
import numpy as np
from engine.bundle import Bundle
from engine.chat_prompt import ChatPrompt
from engine.decode import image_span, start
from engine.sampling import guided_sampler
from engine.text_tokenizer import TextTokenizer
b = Bundle.load({str(bundle)!r})
backend = b.backend('cpu', threads={threads!r})
fmt = ChatPrompt.from_config(b.config)
cond, uncond = fmt.image_prompts(b.vocab, TextTokenizer.load(b.text_tokenizer_path), {PROMPT!r})
t = time.perf_counter()
stream = start(backend, cond, uncond, 1)
first = time.perf_counter()
for step in image_span(stream, b.vocab, guided_sampler(0, cfg_scale={CFG}, temperature=1.0, top_p=1.0)):
    pass
end = time.perf_counter()
out = {{'image_s': end - t, 'prefill_s': first - t, 'ms_per_token': 1e3 * (end - first) / step.done,
        'tokens': step.done}}""")


def transformers_image(hf: Path, prompt: Path, threads: int) -> dict:
    return _child(f"""
import time, json, torch
from transformers import GenerationConfig, JanusForConditionalGeneration
torch.set_num_threads({threads})
torch.manual_seed(0)
cfg = json.load(open({str(prompt)!r}))
model = JanusForConditionalGeneration.from_pretrained({str(hf)!r}, dtype=torch.float32).eval()
ids = torch.tensor([cfg['ids']])
gen = GenerationConfig(do_sample=True, guidance_scale={CFG}, bos_token_id=cfg['bos'],
                       pad_token_id=cfg['pad'], generation_kwargs={{'boi_token_id': cfg['boi']}})
t = time.perf_counter()
tokens = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_mode='image',
                        generation_config=gen)
out = {{'image_s': time.perf_counter() - t, 'tokens': int(tokens.shape[1])}}""")


def step_bytes(bundle: Path) -> int:
    """Bytes of weights a decode step reads: the decode graph's initializers but the embedding tables."""
    import onnx

    model = onnx.load(str(bundle / "model" / "decode.onnx"), load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if t.name in ("embed_tokens", "generation_embeddings"):
            continue
        total += next(int(e.value) for e in t.external_data if e.key == "length") if t.external_data else 0
    return total


def run(shape: str, precisions: list[str], work: Path, threads: int, skip_transformers: bool,
        log=print) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from decode import memory_bandwidth_gbs  # noqa: I001 (bench/decode.py)

    from training.importers.janus_random import write_random_janus

    hf = work / f"janus-{shape}"
    if not (hf / "config.json").is_file():
        t = time.perf_counter()
        write_random_janus(hf, shape, dtype="bfloat16")
        log(f"random {shape} checkpoint in {time.perf_counter() - t:.0f} s")
    weights = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    bandwidth = memory_bandwidth_gbs(time.perf_counter)
    result: dict = {"shape": shape, "threads": threads, "checkpoint_mb": round(weights / 2**20),
                    "mem_bandwidth_gbs": round(bandwidth, 1), "prompt": PROMPT, "cfg": CFG, "tessera": {}}
    for precision in precisions:
        bundle = work / f"bundle-{shape}-{precision}"
        imported = import_bundle(hf, bundle, precision)
        log(f"{precision}: imported in {imported['import_s']:.0f} s, "
            f"peak RSS {imported['peak_rss_mb']:.0f} MB")
        if precision == precisions[0]:  # the prompt ids transformers gets, from the bundle's tokenizer
            from engine.bundle import Bundle
            from engine.chat_prompt import ChatPrompt
            from engine.text_tokenizer import TextTokenizer

            b = Bundle.load(bundle)
            fmt = ChatPrompt.from_config(b.config)
            cond, _ = fmt.image_prompts(b.vocab, TextTokenizer.load(b.text_tokenizer_path), PROMPT)
            prompt = {"ids": b.vocab.to_bpe(cond).tolist(), "bos": fmt.bos_id, "pad": fmt.pad_id,
                      "boi": fmt.boi_id}
            (work / "prompt.json").write_text(json.dumps(prompt))
        timing = tessera_image(bundle, threads)
        read = step_bytes(bundle)
        timing |= {"import_s": round(imported["import_s"], 1),
                   "import_peak_rss_mb": round(imported["peak_rss_mb"]),
                   "weights_mb": round((bundle / "model" / "weights.bin").stat().st_size / 2**20),
                   "step_read_mb": round(read / 2**20),
                   "roofline_ms_per_token": round(1e3 * read / (bandwidth * 1e9), 1)}
        log(f"{precision}: {json.dumps(timing)}")
        result["tessera"][precision] = timing
    if not skip_transformers:
        result["transformers"] = transformers_image(hf, work / "prompt.json", threads)
        log(f"transformers: {json.dumps(result['transformers'])}")
        for timing in result["tessera"].values():
            timing["speedup_vs_transformers"] = round(result["transformers"]["image_s"] / timing["image_s"],
                                                      2)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1b", choices=("tiny", "small", "1b"))
    p.add_argument("--precisions", default="fp32,int8,int4")
    p.add_argument("--work", help="folder for the checkpoint and bundles (default: a temporary one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-transformers", action="store_true", help="leave out the transformers side")
    p.add_argument("--out", help="also write the JSON result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args.shape, args.precisions.split(","), work, args.threads, args.no_transformers,
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
