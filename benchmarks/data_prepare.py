"""Corpus preparation: crammit's Ray Data pipeline against a plain HF `datasets` script.

Both turn the same JSONL file (the embedded corpus of English prose, or `--corpus`, a
real one) into 128-token sequences (`[CLS]` + 127 tokens of documents joined by `[SEP]`)
in Parquet, with the same WordPiece tokenizer, each in its own subprocess while this
process samples the memory of that subprocess's whole tree. The table gives packed
tokens per wall second, peak memory, and the ratio crammit / datasets (the baseline).

    python benchmarks/data_prepare.py
    python benchmarks/data_prepare.py --sizes full,x8 --repeats 2 --workdir /tmp/crammit-data-prepare
    python benchmarks/data_prepare.py --corpus wiki.jsonl --text-field text --sizes half,full
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

SEQ_LEN = 128
VOCAB_SIZE = 32768
TOKENIZER_SAMPLE = 200_000  # documents, as crammit's own tokenizer training takes
NUM_PROC = 2
RSS_EVERY_S = 0.1  # memory sampling interval; RSS is cheap to read (/proc/PID/statm)
PSS_DUTY = 0.05  # PSS is not (smaps: ~50 ms a sweep of a Ray tree): at most this share of a core
PSS_KEYS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")
QUIET_PERCENT = 10.0  # CPU busy % under which a run may start
SIZES = "half, full or xN (N copies)"
APPROACHES = ("datasets", "crammit")


# ---------------------------------------------------------------- the common input

def source_documents(corpus: Path | None, text_field: str) -> Callable[[], Iterator[str]]:
    """The documents the benchmark's corpora are made of, read afresh by each call: the
    embedded corpus, or the `text_field` of a JSONL file, streamed (it may be large)."""
    if corpus is None:
        from crammit.cli import default_cache_dir
        from crammit.data.corpus import embedded_corpus

        documents = embedded_corpus(default_cache_dir()).documents
        return lambda: iter(documents)

    def read() -> Iterator[str]:
        with corpus.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield str(json.loads(line).get(text_field) or "")
    return read


def corpus_documents(size: str, documents: Callable[[], Iterator[str]]) -> Iterator[str]:
    """half: every second document; full: all; xN: all, then N-1 more copies with a
    sentence naming the copy and document appended (still prose, and not a duplicate)."""
    if size == "half":
        return itertools.islice(documents(), 0, None, 2)
    copies = 1 if size == "full" else int(size[1:])
    copied = (f"{doc} This paragraph is entry {i} of copy {copy} of the corpus."
              for copy in range(2, copies + 1) for i, doc in enumerate(documents()))
    return itertools.chain(documents(), copied)


def valid_size(size: str) -> bool:
    return size in ("half", "full") or (size.startswith("x") and size[1:].isdigit() and int(size[1:]) >= 1)


def write_jsonl(path: Path, documents: Iterator[str]) -> int:
    """The documents as JSON lines with a `text` field; how many."""
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for doc in documents:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            count += 1
    return count


def shared_tokenizer(documents: Iterator[str], path: Path) -> None:
    """crammit's WordPiece, trained once before any timing on the normalised corpus's first
    TOKENIZER_SAMPLE documents (all of the embedded corpus's)."""
    from crammit.data.stages import normalize
    from crammit.data.tokenizer import train_tokenizer

    if not path.exists():
        sample = itertools.islice(documents, TOKENIZER_SAMPLE)
        train_tokenizer((normalize(doc, lowercase=True) for doc in sample), VOCAB_SIZE).save(str(path))


# ---------------------------------------------------------------- the two approaches (subprocesses)

def run_crammit(corpus: Path, tokenizer: Path, out: Path) -> dict:
    import ray

    from crammit.config import PrepareConfig
    from crammit.data.pipeline import prepare_corpus

    start = time.time()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             logging_config=ray.LoggingConfig(log_level="ERROR"))
    start_pss = tree_memory(psutil.Process(), full=True)[1]["Pss"]
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

    start_pss = tree_memory(psutil.Process(), full=True)[1]["Pss"]
    prepare_start = time.time()
    raw = load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(out / "hf-cache"))
    tokenized = raw.map(tokenize, batched=True, num_proc=NUM_PROC, remove_columns=raw.column_names)
    packed = tokenized.map(group_texts, batched=True, num_proc=NUM_PROC)
    packed.to_parquet(str(out / "train.parquet"))
    return {"sequences": packed.num_rows, "start_pss": start_pss, "start_s": 0.0,
            "prepare_start": prepare_start, "prepare_end": time.time(), "documents_in": raw.num_rows}


# ---------------------------------------------------------------- measuring a subprocess

def wait_for_quiet(limit_s: float = 60.0) -> float:
    """Wait (up to limit_s) until the CPUs are nearly idle: the last run's Ray processes
    gone, nobody else's job running. Returns the busy percentage of the last second."""
    deadline = time.time() + limit_s
    busy = psutil.cpu_percent(interval=1.0)
    while busy > QUIET_PERCENT and time.time() < deadline:
        busy = psutil.cpu_percent(interval=1.0)
    return busy


def pss(pid: int) -> dict[str, int]:
    """Proportional set size in bytes, and its anonymous, file-backed and shared-memory
    (tmpfs: Ray's object store in /dev/shm) parts, from /proc/PID/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith("Pss"))
    return {key: int(fields[key].split()[0]) * 1024 for key in PSS_KEYS}


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    """`root` and its descendants; a process that exits mid-walk makes psutil raise, so retry."""
    for _ in range(5):
        try:
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            if not root.is_running():
                return []
    return [root]


def system_shmem() -> int:
    """Bytes in shared memory (tmpfs) machine-wide, from /proc/meminfo."""
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("Shmem:")).split()[1]) * 1024


def tree_memory(root: psutil.Process, full: bool, shmem_before: int | None = None
                ) -> tuple[int, dict | None, dict[str, list[int]]]:
    """RSS summed over `root` and all its descendants; with `full`, also their PSS sums
    and, by process name, [PSS sum, processes].

    Ray's object store is a deleted file in /dev/shm whose pages stay resident after the
    worker that touched them exits, when no process's PSS counts them any more: given
    `shmem_before`, the machine's shared memory beyond it that the tree's PSS does not
    count is added to its shmem and PSS."""
    rss, total = 0, dict.fromkeys(PSS_KEYS, 0) if full else None
    by_name: dict[str, list[int]] = {}
    for process in process_tree(root):
        try:
            rss += process.memory_info().rss
            if full:
                parts, name = pss(process.pid), process.name()
                entry = by_name.setdefault(name, [0, 0])
                entry[0] += parts["Pss"]
                entry[1] += 1
                for key in PSS_KEYS:
                    total[key] += parts[key]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, FileNotFoundError,
                ProcessLookupError, KeyError):  # it exited while being read (KeyError: empty smaps)
            continue
    if full and shmem_before is not None:
        unmapped = max(0, system_shmem() - shmem_before - total["Pss_Shmem"])
        total["Pss_Shmem"] += unmapped
        total["Pss"] += unmapped
    return rss, total, by_name


def measure(approach: str, corpus: Path, tokenizer: Path, workdir: Path) -> dict:
    """Run one approach in a fresh subprocess, sampling its process tree's memory."""
    out = workdir / approach
    shutil.rmtree(out, ignore_errors=True)  # no resumed prepare, no datasets cache hits
    out.mkdir(parents=True)
    result_file, log_file = out / "result.json", out / "log.txt"
    command = [sys.executable, __file__, "--run", approach, "--input", str(corpus),
               "--tokenizer", str(tokenizer), "--out", str(out / "prepared"), "--result", str(result_file)]
    samples: list[tuple[float, int, dict | None, dict]] = []
    shmem_before = system_shmem()
    with log_file.open("w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        root = psutil.Process(child.pid)
        done = threading.Event()
        errors: list[Exception] = []

        def sample() -> None:
            next_full = 0.0
            while not done.is_set():
                now = time.time()
                full = now >= next_full
                try:
                    samples.append((now, *tree_memory(root, full, shmem_before)))
                except Exception as error:  # a sampler that stops silently would under-report the peak
                    errors.append(error)
                    return
                if full:
                    next_full = now + (time.time() - now) / PSS_DUTY
                done.wait(RSS_EVERY_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = child.wait()
        done.set()
        sampler.join()
    if errors:
        raise SystemExit(f"memory sampling of {approach} failed: {errors[0]!r}")
    if code != 0:
        raise SystemExit(f"{approach} failed (exit {code}); last lines of {log_file}:\n"
                         + "\n".join(log_file.read_text().splitlines()[-30:]))
    result = json.loads(result_file.read_text())
    # Ray Data logs one line per executed dataset: crammit's stages and their times.
    lines = log_file.read_text().splitlines()
    result["executions_s"] = [float(line.split(" finished in ")[1].split()[0])
                              for line in lines if "execution finished in" in line]
    full = [s for s in samples if s[2] is not None]
    peak = max(full, key=lambda s: s[2]["Pss"])
    result.update(
        approach=approach, seconds=result["prepare_end"] - result["prepare_start"],
        tokens=result["sequences"] * SEQ_LEN, peak_rss=max(s[1] for s in samples), peak_pss=peak[2],
        peak_by_name=dict(sorted(peak[3].items(), key=lambda kv: -kv[1][0])[:5]),
        processes_seen=sum(count for _, count in peak[3].values()),
        pss_every_s=(samples[-1][0] - samples[0][0]) / max(len(full) - 1, 1))
    return result


# ---------------------------------------------------------------- the table

def summarize(runs: list[dict]) -> dict:
    """Repeats of one approach on one corpus: the median time, and the memory of the run
    with the highest peak PSS (a peak is what must fit)."""
    seconds = sorted(run["seconds"] for run in runs)
    if len({run["tokens"] for run in runs}) != 1:
        raise SystemExit(f"{runs[0]['approach']} packed different token counts across repeats")
    worst = max(runs, key=lambda run: run["peak_pss"]["Pss"])
    return {**worst, "seconds": statistics.median(seconds), "seconds_range": (seconds[0], seconds[-1]),
            "peak_rss": max(run["peak_rss"] for run in runs),
            "busy_before": max(run["busy_before"] for run in runs)}


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'corpus':<8}{'MB':>6}{'docs':>8}  {'approach':<10}{'tokens':>11}{'seconds':>9}{'(range)':>13}"
          f"{'tokens/s':>11}"
          f"{'ratio':>7}{'peak RSS':>10}{'peak PSS':>10}{'anon':>7}{'file':>7}{'shmem':>7}{'at start':>10}")
    for row in rows:
        peak = row["peak_pss"]
        span = "{:.1f}-{:.1f}".format(*row["seconds_range"])
        print(f"{row['size']:<8}{row['corpus_mb']:>6.1f}{row['documents']:>8,}  {row['approach']:<10}"
              f"{row['tokens']:>11,}{row['seconds']:>9.1f}{'(' + span + ')':>13}{row['tokens_per_s']:>11,.0f}"
              f"{row['ratio']:>7.2f}"
              f"{mb(row['peak_rss']):>10}{mb(peak['Pss']):>10}{mb(peak['Pss_Anon']):>7}"
              f"{mb(peak['Pss_File']):>7}{mb(peak['Pss_Shmem']):>7}{mb(row['start_pss']):>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="full,x8", help=f"comma-separated corpus sizes: {SIZES}")
    parser.add_argument("--corpus", type=Path, help="a JSONL corpus to use instead of the embedded one")
    parser.add_argument("--text-field", default="text", help="the field of --corpus holding the text")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/crammit-data-prepare"))
    parser.add_argument("--repeats", type=int, default=2, help="runs of each approach per size (median time)")
    parser.add_argument("--run", choices=APPROACHES, help=argparse.SUPPRESS)  # the subprocess side
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        prepare = run_crammit if args.run == "crammit" else run_datasets
        args.result.write_text(json.dumps(prepare(args.input, args.tokenizer, args.out)))
        return

    sizes = args.sizes.split(",")
    if unknown := [size for size in sizes if not valid_size(size)]:
        parser.error(f"unknown --sizes {', '.join(unknown)}; use {SIZES}")
    if args.corpus and not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} is not a file; give a JSONL file")
    source = args.corpus.stem if args.corpus else "embedded"
    workdir = args.workdir / source if args.corpus else args.workdir  # its corpora and tokenizer apart
    workdir.mkdir(parents=True, exist_ok=True)
    documents = source_documents(args.corpus, args.text_field)
    tokenizer = workdir / "tokenizer.json"
    print(f"training the shared tokenizer (not timed): {tokenizer}", flush=True)
    shared_tokenizer(documents(), tokenizer)

    rows = []
    for size in sizes:
        corpus = workdir / size / "corpus.jsonl"
        corpus.parent.mkdir(exist_ok=True)
        corpus_size = write_jsonl(corpus, corpus_documents(size, documents))
        results = {}
        for approach in APPROACHES:
            runs = []
            for repeat in range(args.repeats):
                print(f"{size}: {approach} {repeat + 1}/{args.repeats} ...", flush=True)
                busy = wait_for_quiet()
                run = measure(approach, corpus, tokenizer, workdir / size)
                runs.append({**run, "busy_before": busy})
            results[approach] = summarize(runs)
        for result in results.values():
            result.update(size=size, corpus_mb=corpus.stat().st_size / 1e6, documents=corpus_size,
                          tokens_per_s=result["tokens"] / result["seconds"])
            result["ratio"] = result["tokens_per_s"] / results["datasets"]["tokens_per_s"]
            rows.append(result)
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))

    print(f"\nSame input (JSONL of the {source} corpus), same WordPiece (vocab {VOCAB_SIZE}, trained once "
          "beforehand: crammit gets it through PrepareConfig(tokenizer=PATH), so neither run trains one).")
    print("tokens: packed sequences x 128 ([CLS], [SEP] included). seconds: wall time of the prepare alone, "
          f"median (range) of {args.repeats} runs; tokens/s from the median")
    starts = ", ".join(f"{r['size']} {r['start_s']:.1f} s" for r in rows if r["approach"] == "crammit")
    print(f"  - crammit: prepare_corpus(), on a fresh local Ray cluster (ray.init(num_cpus=2), started "
          f"before the clock: {starts});")
    print("    it also normalises, deduplicates, applies the compression filter, holds out "
          "2 % for eval and orders by token prevalence;")
    print(f"  - datasets: load_dataset('json') -> map(tokenize, batched, num_proc={NUM_PROC}) -> "
          f"map(group texts, batched, num_proc={NUM_PROC}) -> to_parquet (fresh cache dir).")
    for row in rows:
        if row["approach"] == "crammit":
            executions = ", ".join(f"{t:.1f}" for t in row["executions_s"])
            print(f"    crammit on {row['size']}: dropped {row['dropped']}; its {len(row['executions_s'])} "
                  f"Ray Data executions took {executions} s (in the run with the highest peak)")
    pss_every = ", ".join(f"{r['size']}/{r['approach']} {r['pss_every_s']:.2f} s" for r in rows)
    print(f"memory: the subprocess and all its descendants, sampled by this process: RSS every "
          f"{RSS_EVERY_S} s,")
    print(f"  PSS as often as {PSS_DUTY:.0%} of a core allows (on average every {pss_every}).")
    print("  peak RSS: the largest sum of RSS (over all runs), which counts a shared page once per process "
          "mapping it (Ray's object store, pages a fork shares).")
    print("  peak PSS: the largest sum of PSS (over all runs), which splits each shared page among its "
          "mappers (so counts it once),")
    print("  with its anonymous, file-backed (mapped files: datasets' Arrow cache, libraries) and shmem "
          "(Ray's object store in /dev/shm) parts.")
    print("  at start: the PSS sum when the prepare started (imports; crammit: the idle Ray cluster). "
          "All in MiB.")
    busy = ", ".join(f"{r['size']}/{r['approach']} {r['busy_before']:.0f} %" for r in rows)
    print(f"CPU busy in the second before a run, highest over the runs (waited for < {QUIET_PERCENT:.0f} %, "
          f"at most 60 s; other jobs on these 2 cores would skew the timings): {busy}")
    for row in rows:
        parts = ", ".join(f"{name[:40]} x{count} {mb(share)}"
                          for name, (share, count) in row["peak_by_name"].items())
        print(f"  at peak, {row['size']}/{row['approach']}: {row['processes_seen']} processes; "
              f"largest PSS by process name (MiB): {parts}")
    print_table(rows)


if __name__ == "__main__":
    main()
