"""Soak: a real `vllm serve` under a long, mixed, misbehaving load; what must not happen, counted.

    .venv/bin/python benchmarks/soak.py                    # both modes, plugin + stock, 1,000 each
    .venv/bin/python benchmarks/soak.py --requests 60 --runs packcache:next-token

Each run starts its own `vllm serve` on 127.0.0.1 (``tests.engine.test_serve.running_server``)
with a tiny random-weight Lumos-1 (``model.factory``, made once in artifacts/soak-tiny-lumos)
or ``--model``, and sends ``--requests`` requests, ``--concurrency`` in flight, in rounds of
``--round``. A run is POLICY:MODE: ``packcache:next-token``, ``packcache:frame-parallel``
(AR-DF, hidden CFG twins when ``ardf_cfg_scale`` != 1) or ``none:next-token`` (stock vLLM, the
same requests).

The requests are drawn (seeded) from a pool of distinct specs: random prompts (text-to-video and
image-to-video), 1 to ``--max-frames`` frames, per-request overrides through ``vllm_xargs``
(``packcache_window``, ``packcache_min_keep``, ``packcache_decay``, ``packcache_selector``;
frame-parallel: ``ardf_steps_per_frame``, ``ardf_cfg_scale``, ``ardf_seed``, ...), streamed or
not. About ``--abort-share`` of them are abandoned by the client: a streamed one after a random
number of chunks, a plain one after a random delay (the connection closes; vLLM aborts the
request). About ``--bad-share`` are bad requests the server must answer with HTTP 400.

The oracle is the dense reference (``reference.py``, ``reference_ardf.py``) with the request's
own policy (``cli.parse_request_overrides`` over the server's, exactly as the engine derives it;
stock vLLM: no eviction), computed once per distinct spec before the server starts. It is
independent of the engine, so it catches a wrong result that a re-run on the same server would
repeat, and a request's tokens must not depend on what else was in flight: next-token decoding
is float32 greedy, frame-parallel sampling seeded per request. A served request's tokens must
equal it; an abandoned stream's tokens must be a prefix of it.

Per round (the server idle between rounds): requests served / aborted / rejected, unexpected
HTTP errors, wrong tokens, the largest cache a request held (``/metrics``) against its bound,
``vllm:num_requests_running`` and ``vllm:kv_cache_usage_perc`` once idle (must reach 0), whether
the server is alive, ERROR lines in its log, and the RSS of every process of the server.

Writes under ``--out`` (default benchmarks/results/soak/), as it goes: requests.jsonl (one line
per request), rounds.jsonl (one line per round); at the end soak.md (the table, ``soak_report``)
and soak_rss.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RUNS = ("packcache:next-token", "packcache:frame-parallel", "none:next-token")
SERVER_WINDOW, SERVER_MIN_KEEP = 3, 0.25  # the server's policy: frames are thinned, then dropped
MAX_MODEL_LEN = 512
TOO_LONG_MAX_TOKENS = 2 * MAX_MODEL_LEN
IDLE_TIMEOUT_S = 120.0  # generous: a leak never reaches 0; a slow machine gets there later
REQUEST_ID = re.compile(r"soak(\d+)-")


# --- what is sent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One distinct request. bad: what makes it a bad request (None: a good one)."""

    key: int
    prompt: tuple[int, ...]
    frames: int
    xargs: tuple[tuple[str, object], ...]
    bad: str | None = None

    def max_tokens(self, per_frame: int) -> int:
        if self.bad == "max_tokens past max_model_len":
            return TOO_LONG_MAX_TOKENS
        if self.bad == "max_tokens not whole frames":
            return self.frames * per_frame + 1
        return self.frames * per_frame


@dataclass(frozen=True)
class Send:
    """One request of the run: a spec, how it is sent, when the client leaves (None: never;
    streamed: after that many chunks; plain: after that many seconds)."""

    index: int
    spec: Spec
    stream: bool
    leave_after: float | None


PACKCACHE_OVERRIDES = (
    {},
    {"packcache_window": 2},
    {"packcache_window": 4, "packcache_min_keep": 0.5},
    {"packcache_decay": 0.7},
    {"packcache_selector": "key_norm"},
    {"packcache_window": 1},
)


def ardf_knobs(rng: random.Random) -> dict:
    return {
        "ardf_steps_per_frame": rng.randint(2, 4),
        "ardf_cfg_scale": rng.choice([1.0, 3.0, 3.0]),
        "ardf_top_k": 40,
        "ardf_temperature": 1.0,
        "ardf_seed": rng.randrange(1 << 16),
    }


def good_specs(mode: str, rows: int, cols: int, count: int, max_frames: int, seed: int):
    from packcache_vllm.model.factory import make_video_prompt

    rng = random.Random(seed)
    specs = []
    for key in range(count):
        text = [4 + rng.randrange(97, 123) for _ in range(rng.randint(3, 24))]
        prompt = make_video_prompt(
            rows, cols, text, with_condition_frame=rng.random() < 0.6, rng=rng
        )
        xargs = dict(rng.choice(PACKCACHE_OVERRIDES))
        if mode == "frame-parallel":
            xargs.update(ardf_knobs(rng))
        frames = rng.randint(1, max_frames)
        specs.append(Spec(key, tuple(prompt), frames, tuple(sorted(xargs.items()))))
    return specs


def bad_specs(run: str, template: Spec, first_key: int) -> list[Spec]:
    """Requests the server must refuse with HTTP 400 (vLLM's own limit; with the plugin, its
    checks too)."""
    policy, mode = run.split(":")
    cases = [("max_tokens past max_model_len", template.prompt, ())]
    if policy != "none":
        cases += [
            ("packcache_window 0", template.prompt, (("packcache_window", 0),)),
            ("unknown packcache key", template.prompt, (("packcache_bogus", 1),)),
            ("not a video prompt", template.prompt[:-5], ()),
        ]
    if mode == "frame-parallel":
        cases += [
            ("max_tokens not whole frames", template.prompt, template.xargs),
            ("ardf_steps_per_frame 0", template.prompt, (("ardf_steps_per_frame", 0),)),
        ]
    return [
        Spec(first_key + i, prompt, 1, xargs, bad) for i, (bad, prompt, xargs) in enumerate(cases)
    ]


def plan_sends(specs, bad, args, per_frame: int, chunk_count) -> list[Send]:
    rng = random.Random(args.seed + 1)
    sends = []
    for index in range(args.requests):
        if rng.random() < args.bad_share:
            sends.append(Send(index, rng.choice(bad), rng.random() < 0.5, None))
            continue
        spec = rng.choice(specs)
        stream = rng.random() < 0.5
        leave = None
        if rng.random() < args.abort_share:
            leave = float(rng.randrange(chunk_count(spec))) if stream else rng.uniform(0.05, 2.0)
        sends.append(Send(index, spec, stream, leave))
    return sends


# --- the oracle -------------------------------------------------------------------------------


def server_policy(run: str):
    from packcache_vllm.core.budget import PackCacheConfig

    if run.startswith("none:"):
        return None
    return PackCacheConfig.preset("packcache", window=SERVER_WINDOW, min_keep=SERVER_MIN_KEEP)


def request_policy(base, spec: Spec):
    from packcache_vllm.cli import parse_request_overrides

    return None if base is None else parse_request_overrides(dict(spec.xargs), base)


def ardf_params(spec: Spec):
    from types import SimpleNamespace

    from packcache_vllm.engine.ardf_requests import ardf_params_of

    return ardf_params_of(SimpleNamespace(extra_args=dict(spec.xargs)))


def expected_tokens(reference, run: str, spec: Spec) -> tuple[int, ...]:
    """The dense reference's tokens for a good spec, with its own policy."""
    from packcache_vllm.reference import PackCachePolicy
    from packcache_vllm.reference_ardf import generate_ardf

    config = request_policy(server_policy(run), spec)
    if run.endswith(":frame-parallel"):
        return generate_ardf(
            reference, spec.prompt, spec.frames, ardf_params(spec), config
        ).token_ids
    layout = reference.layout_for(spec.prompt)
    policy = None if config is None else PackCachePolicy(config)
    return reference.generate(
        spec.prompt, layout, spec.frames * layout.tokens_per_frame, policy
    ).token_ids


def cache_bounds(run: str, spec: Spec, rows: int, cols: int) -> dict[str, int]:
    """The most tokens the request's cache (and its CFG twin's) may hold."""
    from packcache_vllm.core.budget import bound_tokens
    from packcache_vllm.core.layout import FrameLayout, find_frame_start, tokens_per_frame
    from packcache_vllm.reference_ardf import unconditional_prompt

    config = request_policy(server_policy(run), spec)
    if config is None:  # stock vLLM: the whole request
        return {"": len(spec.prompt) + spec.frames * tokens_per_frame(rows, cols)}
    prompts = {"": list(spec.prompt)}
    if run.endswith(":frame-parallel") and ardf_params(spec).cfg_scale != 1:
        prompts["#uncond"] = unconditional_prompt(spec.prompt)
    bounds = {}
    for suffix, prompt in prompts.items():
        layout = FrameLayout(find_frame_start(prompt), len(prompt), rows, cols)
        bounds[suffix] = bound_tokens(layout, config, spec.frames * layout.tokens_per_frame)
    return bounds


# --- one request ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to one request. outcome: served | aborted | rejected | error."""

    run: str
    index: int
    spec: int
    bad: str | None
    stream: bool
    leave_after: float | None
    outcome: str = "error"
    tokens: int = 0
    correct: bool | None = None
    status: int | None = None
    error: str | None = None
    seconds: float = 0.0


def request_body(spec: Spec, send: Send, model: str, per_frame: int) -> dict:
    extra = {"return_token_ids": True, "ignore_eos": True, "request_id": f"soak{send.index}"}
    if spec.xargs:
        extra["vllm_xargs"] = dict(spec.xargs)
    return {
        "model": model,
        "prompt": list(spec.prompt),
        "max_tokens": spec.max_tokens(per_frame),
        "temperature": 0.0,
        "stream": send.stream,
        "extra_body": extra,
    }


async def streamed_tokens(client, body: dict, leave_after: float | None) -> tuple[list, bool]:
    """(token ids, finished): the stream read to its end, or left after ``leave_after`` chunks."""
    tokens, finished, chunks = [], False, 0
    stream = await client.completions.create(**body)
    try:
        async for chunk in stream:
            if leave_after is not None and chunks >= leave_after:
                break
            chunks += 1
            for choice in chunk.choices:
                tokens += list(getattr(choice, "token_ids", None) or [])
                finished = finished or choice.finish_reason is not None
    finally:
        await stream.close()
    return tokens, finished  # left before the last chunk: not finished


async def plain_tokens(client, body: dict, leave_after: float | None) -> tuple[list, bool]:
    call = client.completions.create(**body)
    if leave_after is None:
        reply = await call
        return list(reply.choices[0].token_ids), reply.choices[0].finish_reason is not None
    try:
        reply = await asyncio.wait_for(call, timeout=leave_after)
    except TimeoutError:
        return [], False
    return list(reply.choices[0].token_ids), reply.choices[0].finish_reason is not None


async def send_one(client, send: Send, run: str, model: str, per_frame: int, expected) -> Outcome:
    import openai

    spec = send.spec
    result = Outcome(run, send.index, spec.key, spec.bad, send.stream, send.leave_after)
    body = request_body(spec, send, model, per_frame)
    start = time.monotonic()
    try:
        read = streamed_tokens if send.stream else plain_tokens
        tokens, finished = await read(client, body, send.leave_after)
        judge(result, tokens, finished, expected.get(spec.key))
    except openai.BadRequestError as err:
        result.outcome, result.status, result.error = "rejected", 400, err.message[:300]
    except openai.APIStatusError as err:
        result.status, result.error = err.status_code, err.message[:300]
    except openai.APIError as err:  # connection lost, an error event in the stream
        result.status, result.error = stream_error_code(err), f"{type(err).__name__}: {err}"[:300]
        if result.status == 400:  # refused inside a 200 stream (vLLM checks some requests there)
            result.outcome = "rejected"
    result.seconds = round(time.monotonic() - start, 3)
    return result


def stream_error_code(err) -> int | None:
    """The HTTP code an error event in a stream names (vLLM: ``{"error": {..., "code": 400}}``)."""
    body = getattr(err, "body", None)
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def judge(result: Outcome, tokens: list, finished: bool, expected) -> None:
    result.tokens = len(tokens)
    if finished:
        result.outcome = "served"
        result.correct = expected is not None and tuple(tokens) == tuple(expected)
    elif result.leave_after is not None:
        result.outcome = "aborted"
        result.correct = expected is not None and tuple(tokens) == tuple(expected[: len(tokens)])
    else:
        result.error = f"the response ended without a finish reason after {len(tokens)} tokens"


# --- the server, watched ----------------------------------------------------------------------


def process_rss(server) -> dict[str, int]:
    """RSS bytes of the server and each of its processes, by name (the API server is root)."""
    import psutil

    rss = {"api_server": server.memory_info().rss}
    for child in server.children(recursive=True):
        try:
            name = child.name()
            rss[name] = rss.get(name, 0) + child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return rss


def metric_total(samples, name: str) -> float:
    return sum(value for _, value in samples.get(name, []))


def physical_tokens(samples) -> dict[str, int]:
    """What /metrics says about the caches of running requests: engine request id -> tokens it
    holds (per-request gauges), or ``max:<engine>`` -> the most tokens any running request's
    cache has held (``packcache:max_request_physical_tokens``)."""
    held = {
        labels["request_id"]: int(value)
        for labels, value in samples.get("packcache:request_physical_tokens", [])
    }
    for labels, value in samples.get("packcache:max_request_physical_tokens", []):
        held[f"max:{labels.get('engine', '')}"] = int(value)
    return held


@dataclass
class CacheWatch:
    """The largest cache each request (or the engine, by its maximum) held, sampled from
    /metrics while the run goes."""

    most: dict[str, int] = field(default_factory=dict)

    def add(self, samples) -> None:
        for key, tokens in physical_tokens(samples).items():
            self.most[key] = max(self.most.get(key, 0), tokens)

    def over_bound(self, sends: dict[int, Send], bounds) -> list[tuple[str, int, int]]:
        """(what, tokens held, its bound) for every cache past its bound; an engine's maximum
        is held to the largest bound of any request of the run."""
        largest = max(
            (max(bounds(s.spec).values()) for s in sends.values() if s.spec.bad is None), default=0
        )
        over = []
        for key, tokens in self.most.items():
            bound = largest if key.startswith("max:") else self.request_bound(key, sends, bounds)
            if bound is not None and tokens > bound:
                over.append((key, tokens, bound))
        return over

    @staticmethod
    def request_bound(request_id: str, sends: dict[int, Send], bounds) -> int | None:
        match = REQUEST_ID.search(request_id)
        if match is None or int(match.group(1)) not in sends:
            return None
        spec = sends[int(match.group(1))].spec
        return bounds(spec)["#uncond" if request_id.endswith("#uncond") else ""]


async def watch_caches(url: str, watch: CacheWatch, stop: asyncio.Event) -> None:
    from tests.engine.test_serve import scrape_metrics

    while not stop.is_set():
        watch.add(await asyncio.to_thread(scrape_metrics, url))
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            continue


async def idle_state(url: str) -> dict:
    """Running / waiting requests and KV usage once they reach 0 (or after IDLE_TIMEOUT_S)."""
    from tests.engine.test_serve import scrape_metrics

    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        samples = await asyncio.to_thread(scrape_metrics, url)
        state = {
            "running": metric_total(samples, "vllm:num_requests_running"),
            "waiting": metric_total(samples, "vllm:num_requests_waiting"),
            "kv_usage": metric_total(samples, "vllm:kv_cache_usage_perc"),
            "cache_tokens": sum(physical_tokens(samples).values()),
        }
        if not any(state.values()) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.5)


ERROR_SOURCE = re.compile(r" ERROR \S+ \S+ (\[[^\]]+\])")


def error_events(log_path: Path) -> list[str]:
    """The server log's ERROR events: a run of ERROR lines from one ``[file:line]`` (a message
    and its traceback) is one event, named by its first line."""
    events, previous = [], None
    for line in log_path.read_text(errors="replace").splitlines():
        match = ERROR_SOURCE.search(line)
        source = match.group(1) if match else None
        if source is not None and source != previous:
            events.append(line)
        previous = source
    return events


# --- a run ------------------------------------------------------------------------------------


@dataclass
class RunSetup:
    run: str
    model_dir: Path
    rows: int
    cols: int
    per_frame: int
    sends: list[Send]
    expected: dict[int, tuple[int, ...]]


def server_flags(run: str, kv_cache_bytes: int) -> tuple[str, ...]:
    policy, mode = run.split(":")
    flags = (
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--kv-cache-memory-bytes",
        str(kv_cache_bytes),
        "--kv-policy",
        policy,
    )
    if policy != "none":
        flags += (
            "--packcache-window",
            str(SERVER_WINDOW),
            "--packcache-min-keep",
            str(SERVER_MIN_KEEP),
            "--packcache-mode",
            mode,
        )
    return flags


def prepare(run: str, args, model_dir: Path) -> RunSetup:
    from packcache_vllm.core.layout import tokens_per_frame
    from packcache_vllm.reference import ReferenceVideoModel

    mode = run.split(":")[1]
    config = json.loads((model_dir / "config.json").read_text())
    rows, cols = config["video_rows"], config["video_cols"]
    per_frame = tokens_per_frame(rows, cols)
    specs = good_specs(mode, rows, cols, args.distinct, args.max_frames, args.seed)
    bad = bad_specs(run, specs[0], len(specs))

    def chunk_count(spec: Spec) -> int:  # a commit streams its whole frame at once
        return spec.frames if mode == "frame-parallel" else spec.frames * per_frame

    sends = plan_sends(specs, bad, args, per_frame, chunk_count)
    used = {send.spec.key: send.spec for send in sends if send.spec.bad is None}
    reference = ReferenceVideoModel.from_pretrained(model_dir)
    expected = {key: expected_tokens(reference, run, spec) for key, spec in sorted(used.items())}
    return RunSetup(run, model_dir, rows, cols, per_frame, sends, expected)


class Recorder:
    """Appends JSON lines as the run goes."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.requests = (out / "requests.jsonl").open("a")
        self.rounds = (out / "rounds.jsonl").open("a")

    def request(self, outcome: Outcome) -> None:
        self.requests.write(json.dumps(asdict(outcome)) + "\n")
        self.requests.flush()

    def round(self, record: dict) -> None:
        self.rounds.write(json.dumps(record) + "\n")
        self.rounds.flush()

    def close(self) -> None:
        self.requests.close()
        self.rounds.close()


async def send_round(
    url: str, batch: list[Send], setup: RunSetup, concurrency: int, recorder: Recorder
) -> list[Outcome]:
    """One round's requests, ``concurrency`` in flight, on a client of its own: a keep-alive
    connection left idle between rounds may be closed by the server just as it is reused."""
    import openai

    queue: asyncio.Queue[Send] = asyncio.Queue()
    for send in batch:
        queue.put_nowait(send)
    outcomes = []
    async with openai.AsyncOpenAI(
        base_url=url, api_key="unused", max_retries=0, timeout=600
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                send = queue.get_nowait()
                outcome = await send_one(
                    client, send, setup.run, str(setup.model_dir), setup.per_frame, setup.expected
                )
                outcomes.append(outcome)
                recorder.request(outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def drive(url: str, setup: RunSetup, args, recorder: Recorder, log_path: Path) -> list[dict]:
    """Every round of the run against a started server; returns the round records."""
    from tests.engine.test_shutdown import server_process

    server = server_process(url)
    rounds, outcomes, watch, started = [], [], CacheWatch(), time.monotonic()
    by_index = {send.index: send for send in setup.sends}
    bounds = {}

    def bound_of(spec: Spec) -> dict[str, int]:
        if spec.key not in bounds:
            bounds[spec.key] = cache_bounds(setup.run, spec, setup.rows, setup.cols)
        return bounds[spec.key]

    for first in range(0, len(setup.sends), args.round):
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_caches(url, watch, stop))
        batch = setup.sends[first : first + args.round]
        outcomes += await send_round(url, batch, setup, args.concurrency, recorder)
        stop.set()
        await watcher
        alive = server.is_running() and server.status() != "zombie"
        idle = await idle_state(url) if alive else {}
        record = round_record(
            setup.run,
            len(rounds),
            outcomes,
            watch,
            by_index,
            bound_of,
            idle,
            alive,
            server,
            log_path,
            started,
        )
        rounds.append(record)
        recorder.round(record)
        print(
            f"[soak {setup.run}] round {record['round']}: {record['totals']} "
            f"rss {record['rss_mib']}",
            flush=True,
        )
        if not alive:
            break
    return rounds


def round_record(
    run, number, outcomes, watch, by_index, bound_of, idle, alive, server, log_path, started
) -> dict:
    totals = {kind: 0 for kind in ("served", "aborted", "rejected", "error")}
    for outcome in outcomes:
        totals[outcome.outcome] += 1
    over = watch.over_bound(by_index, bound_of)
    return {
        "run": run,
        "round": number,
        "requests": len(outcomes),
        "seconds": round(time.monotonic() - started, 1),
        "totals": totals,
        "wrong_tokens": sum(o.correct is False for o in outcomes),
        "bad_sent": sum(o.bad is not None for o in outcomes),
        "bad_rejected": sum(o.bad is not None and o.outcome == "rejected" for o in outcomes),
        "max_physical_tokens": max(watch.most.values(), default=0),
        "requests_over_bound": over[:20],
        "num_over_bound": len(over),
        "idle": idle,
        "server_alive": alive,
        "error_events": len(events := error_events(log_path)),
        "error_examples": sorted({e.split("] ", 1)[-1][:160] for e in events})[:5],
        "rss_mib": {name: round(rss / 2**20, 1) for name, rss in process_rss(server).items()}
        if alive
        else {},
    }


def run_one(run: str, args, model_dir: Path, recorder: Recorder) -> list[dict]:
    from tests.engine.test_serve import running_server

    setup = prepare(run, args, model_dir)
    log_path = args.out / f"serve-{run.replace(':', '-')}.log"
    flags = server_flags(run, args.kv_cache_mb << 20)
    with running_server(model_dir, log_path, *flags) as url:
        return asyncio.run(drive(url, setup, args, recorder, log_path))


def ensure_model(args) -> Path:
    if args.model is not None:
        return args.model
    from packcache_vllm.model.factory import build_tiny_lumos

    path = ROOT / "artifacts" / "soak-tiny-lumos"
    if not (path / "model.safetensors").is_file():
        build_tiny_lumos(path, seed=0)
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=RUNS,
        default=list(RUNS),
        help="POLICY:MODE runs, each with its own server (default: all three)",
    )
    parser.add_argument("--model", type=Path, help="checkpoint (default: a tiny factory model)")
    parser.add_argument("--requests", type=int, default=1000, help="requests per run")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--round", type=int, default=50, help="requests per round (default 50)")
    parser.add_argument(
        "--distinct", type=int, default=12, help="distinct request specs (the oracle: one each)"
    )
    parser.add_argument("--max-frames", type=int, default=6, help="video length: 1..N frames")
    parser.add_argument("--abort-share", type=float, default=1 / 3, help="share abandoned")
    parser.add_argument("--bad-share", type=float, default=0.03, help="share of bad requests")
    parser.add_argument("--kv-cache-mb", type=int, default=64, help="the server's KV pool (MiB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "soak")
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "round", "distinct", "max_frames", "kv_cache_mb"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("abort_share", "bad_share"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    """Run the soak; returns each run's round records."""
    from benchmarks.soak_report import write_report

    args = parse_args(argv)
    model_dir = ensure_model(args)
    recorder = Recorder(args.out)
    results = {}
    try:
        for run in args.runs:
            results[run] = run_one(run, args, model_dir, recorder)
    finally:
        recorder.close()
    write_report(args.out)
    return results


if __name__ == "__main__":
    main()
