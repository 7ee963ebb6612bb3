"""Corpus preparation: crammit's Ray Data pipeline against a plain HF `datasets` script.

Both turn the same JSONL file of English prose (the embedded corpus) into 128-token
sequences (`[CLS]` + 127 tokens of documents joined by `[SEP]`) in Parquet, with the same
WordPiece tokenizer, each in its own subprocess while this process samples the memory
of that subprocess's whole tree. The table gives packed tokens per wall second, peak
memory, and the ratio crammit / datasets (the baseline).

    python benchmarks/data_prepare.py
    python benchmarks/data_prepare.py --sizes half,full,double --workdir /tmp/crammit-data-prepare
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

SEQ_LEN = 128
VOCAB_SIZE = 32768
NUM_PROC = 2
RSS_EVERY_S = 0.1  # memory sampling intervals: RSS is cheap to read, PSS is not
PSS_EVERY_S = 1.0
SIZES = ("half", "full", "double")
APPROACHES = ("datasets", "crammit")


# ---------------------------------------------------------------- the common input

def corpus_documents(size: str, documents: list[str]) -> list[str]:
    """half: every second document; full: all; double: all, then all again with a
    sentence naming the document appended (still prose, and not a duplicate)."""
    if size == "half":
        return documents[::2]
    if size == "full":
        return documents
    return documents + [f"{doc} This paragraph is entry {i} of the corpus's second copy."
                        for i, doc in enumerate(documents)]


def write_jsonl(path: Path, documents: list[str]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in documents)


def shared_tokenizer(documents: list[str], path: Path) -> None:
    """crammit's WordPiece, trained once on the normalised full corpus, before any timing."""
    from crammit.data.stages import normalize
    from crammit.data.tokenizer import train_tokenizer

    if not path.exists():
        train_tokenizer((normalize(doc, lowercase=True) for doc in documents), VOCAB_SIZE).save(str(path))


# ---------------------------------------------------------------- the two approaches (subprocesses)

def run_crammit(corpus: Path, tokenizer: Path, out: Path) -> dict:
    import ray

    from crammit.data.pipeline import PrepareConfig, prepare_corpus

    start = time.time()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             logging_config=ray.LoggingConfig(log_level="ERROR"))
    start_pss = tree_memory(psutil.Process(), full=True)[1]
    prepare_start = time.time()
    config = PrepareConfig(corpus=str(corpus), tokenizer=str(tokenizer), vocab_size=VOCAB_SIZE,
                           seq_len=SEQ_LEN)
    manifest = prepare_corpus(config, out, out.parent / "cache")
    end = time.time()
    ray.shutdown()
    counts = manifest["counts"]
    return {"sequences": manifest["train_sequences"] + manifest["eval_sequences"], "start_pss": start_pss,
            "start_s": prepare_start - start, "prepare_start": prepare_start, "prepare_end": end,
            "documents_in": counts.get("documents_read", 0),
            "dropped": {key: counts.get(key, 0) for key in ("dropped_empty", "dropped_duplicates",
                                                             "dropped_compression")}}


def run_datasets(corpus: Path, tokenizer_path: Path, out: Path) -> dict:
    """What a user writes (HF's run_mlm.py recipe): load, tokenize, group texts, save."""
    from datasets import load_dataset
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")

    def tokenize(batch: dict) -> dict:
        encodings = tokenizer.encode_batch(batch["text"], add_special_tokens=False)
        return {"input_ids": [encoding.ids + [sep_id] for encoding in encodings]}

    def group_texts(batch: dict) -> dict:
        stream = list(itertools.chain.from_iterable(batch["input_ids"]))
        body = SEQ_LEN - 1
        return {"input_ids": [[cls_id, *stream[i: i + body]]
                              for i in range(0, len(stream) - body + 1, body)]}

    start_pss = tree_memory(psutil.Process(), full=True)[1]
    prepare_start = time.time()
    raw = load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(out / "hf-cache"))
    tokenized = raw.map(tokenize, batched=True, num_proc=NUM_PROC, remove_columns=raw.column_names)
    packed = tokenized.map(group_texts, batched=True, num_proc=NUM_PROC)
    packed.to_parquet(str(out / "train.parquet"))
    return {"sequences": packed.num_rows, "start_pss": start_pss, "start_s": 0.0,
            "prepare_start": prepare_start, "prepare_end": time.time(), "documents_in": raw.num_rows}


# ---------------------------------------------------------------- measuring a subprocess

def tree_memory(root: psutil.Process, full: bool) -> tuple[int, int | None, dict[str, int]]:
    """RSS summed over `root` and all its descendants; with `full`, also their PSS sum and
    PSS by process name (reading smaps costs ~50 ms per sweep, /proc/PID/statm ~0.1 ms)."""
    rss, pss = 0, 0 if full else None
    by_name: dict[str, int] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info() if full else process.memory_info()
            name = process.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss += info.rss
        if full:
            pss += info.pss
            by_name[name] = by_name.get(name, 0) + info.pss
    return rss, pss, by_name


def measure(approach: str, corpus: Path, tokenizer: Path, workdir: Path) -> dict:
    """Run one approach in a fresh subprocess, sampling its process tree's memory."""
    out = workdir / approach
    shutil.rmtree(out, ignore_errors=True)  # no resumed prepare, no datasets cache hits
    out.mkdir(parents=True)
    result_file, log_file = out / "result.json", out / "log.txt"
    command = [sys.executable, __file__, "--run", approach, "--input", str(corpus),
               "--tokenizer", str(tokenizer), "--out", str(out / "prepared"), "--result", str(result_file)]
    samples: list[tuple[float, int, int | None, dict]] = []
    with log_file.open("w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        root = psutil.Process(child.pid)
        done = threading.Event()

        def sample() -> None:
            last_full = 0.0
            while not done.is_set():
                now = time.time()
                full = now - last_full >= PSS_EVERY_S
                last_full = now if full else last_full
                samples.append((now, *tree_memory(root, full)))
                done.wait(RSS_EVERY_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        done.set()
        sampler.join()
    if code != 0:
        raise SystemExit(f"{approach} failed (exit {code}); last lines of {log_file}:\n"
                         + "\n".join(log_file.read_text().splitlines()[-30:]))
    result = json.loads(result_file.read_text())
    full = [s for s in samples if s[2] is not None]
    peak = max(full, key=lambda s: s[2])
    result.update(
        approach=approach, seconds=result["prepare_end"] - result["prepare_start"],
        tokens=result["sequences"] * SEQ_LEN, peak_rss=max(s[1] for s in samples), peak_pss=peak[2],
        peak_by_name=dict(sorted(peak[3].items(), key=lambda kv: -kv[1])[:5]),
        processes_seen=len(peak[3]), samples=len(samples), pss_samples=len(full))
    return result


# ---------------------------------------------------------------- the table

def mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def print_table(rows: list[dict]) -> None:
    header = (f"{'corpus':<8}{'MB':>7}{'documents':>11}  {'approach':<10}{'tokens':>12}{'seconds':>9}"
              f"{'tokens/s':>11}{'ratio':>7}{'peak RSS MiB':>14}{'peak PSS MiB':>14}{'at start':>10}")
    print("\n" + header)
    for row in rows:
        print(f"{row['size']:<8}{row['corpus_mb']:>7.1f}{row['documents']:>11,}  {row['approach']:<10}"
              f"{row['tokens']:>12,}{row['seconds']:>9.1f}{row['tokens_per_s']:>11,.0f}{row['ratio']:>7.2f}"
              f"{mb(row['peak_rss']):>14}{mb(row['peak_pss']):>14}{mb(row['start_pss']):>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="half,full", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/crammit-data-prepare"))
    parser.add_argument("--run", choices=APPROACHES, help=argparse.SUPPRESS)  # the subprocess side
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        run = run_crammit if args.run == "crammit" else run_datasets
        args.result.write_text(json.dumps(run(args.input, args.tokenizer, args.out)))
        return

    from crammit.cli import default_cache_dir
    from crammit.data.corpus import embedded_documents

    sizes = args.sizes.split(",")
    if unknown := set(sizes) - set(SIZES):
        parser.error(f"unknown --sizes {', '.join(sorted(unknown))}; use {', '.join(SIZES)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    documents = embedded_documents(default_cache_dir())
    tokenizer = args.workdir / "tokenizer.json"
    print(f"training the shared tokenizer (not timed): {tokenizer}", flush=True)
    shared_tokenizer(documents, tokenizer)

    rows = []
    for size in sizes:
        corpus = args.workdir / size / "corpus.jsonl"
        corpus.parent.mkdir(exist_ok=True)
        size_documents = corpus_documents(size, documents)
        write_jsonl(corpus, size_documents)
        results = {}
        for approach in APPROACHES:
            print(f"{size}: {approach} ...", flush=True)
            results[approach] = measure(approach, corpus, tokenizer, args.workdir / size)
        for result in results.values():
            result.update(size=size, corpus_mb=corpus.stat().st_size / 1e6, documents=len(size_documents),
                          tokens_per_s=result["tokens"] / result["seconds"])
            result["ratio"] = result["tokens_per_s"] / results["datasets"]["tokens_per_s"]
            rows.append(result)
    (args.workdir / "results.json").write_text(json.dumps(rows, indent=1))

    print(f"\nSame input (JSONL of the embedded corpus), same WordPiece (vocab {VOCAB_SIZE}, trained once "
          "beforehand: crammit gets it through PrepareConfig(tokenizer=PATH), so neither run trains one).")
    print("tokens: packed sequences x 128 ([CLS], [SEP] included). seconds: wall time of the prepare alone")
    starts = ", ".join(f"{r['size']} {r['start_s']:.1f} s" for r in rows if r["approach"] == "crammit")
    print(f"  - crammit: prepare_corpus(), on a fresh local Ray cluster (ray.init(num_cpus=2), started "
          f"before the clock: {starts});")
    print("    it also normalises, deduplicates, applies the compression filter, holds out "
          "2 % for eval and orders by token prevalence;")
    print(f"  - datasets: load_dataset('json') -> map(tokenize, batched, num_proc={NUM_PROC}) -> "
          f"map(group texts, batched, num_proc={NUM_PROC}) -> to_parquet (fresh cache dir).")
    for row in rows:
        if row["approach"] == "crammit":
            print(f"    crammit dropped on {row['size']}: {row['dropped']}")
    print(f"memory: the subprocess and all its descendants, sampled by this process (RSS every "
          f"{RSS_EVERY_S} s, PSS every {PSS_EVERY_S} s).")
    print("  RSS summed over processes counts shared pages once per process that maps them (Ray's "
          "object store in /dev/shm, forked pages); PSS splits each shared page among its mappers, so "
          "the PSS sum counts it once. 'at start': PSS when the prepare started (imports, Ray cluster).")
    for row in rows:
        parts = ", ".join(f"{name} {mb(pss)}" for name, pss in row["peak_by_name"].items())
        print(f"  at peak, {row['size']}/{row['approach']}: {row['processes_seen']} processes; "
              f"largest PSS (MiB): {parts}")
    print_table(rows)


if __name__ == "__main__":
    main()
