"""Running one load: wrk with a generated Lua script, or bench.load, in another process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.spec import LoadResult, RequestSpec

REPO = Path(__file__).resolve().parents[1]

# wrk: the request template, expanded per request exactly as bench/load.py expands it.
LUA_BODY = r"""
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  bad = 0
  seq = 0
  counted_up = {}
  sample = nil
  math.randomseed(os.time() * 1000 + tid * 7919)
  if cfg.tokens_file then
    tokens = {}
    for line in io.lines(cfg.tokens_file) do tokens[#tokens + 1] = line end
  end
  if cfg.pool_file then
    pool = {}
    for line in io.lines(cfg.pool_file) do
      local tab = line:find("\t", 1, true)
      if tab then pool[#pool + 1] = { line:sub(1, tab - 1), line:sub(tab + 1) } end
    end
    pool_next = tid
  end
end

function request()
  seq = seq + 1
  local uid = math.random(cfg.users)
  local headers = {}
  for k, v in pairs(cfg.headers) do
    if tokens then v = v:gsub("__TOKEN__", tokens[uid]) end
    headers[k] = v
  end
  local body = cfg.body
  if pool then
    -- Threads take interleaved pool entries, so no pre-signed event is sent twice.
    local item = pool[((pool_next - 1) % #pool) + 1]
    pool_next = pool_next + cfg.threads
    headers[cfg.pool_header] = item[1]
    body = item[2]
  elseif body then
    body = body:gsub("__UID__", tostring(uid))
    body = body:gsub("__KEY__", cfg.key_prefix .. "-" .. tid .. "-" .. seq)
    -- By turns for each user, as bench.load does: a random walk over all requests sent
    -- some users past their limit, and those answers counted as errors.
    local up = not counted_up[uid]
    counted_up[uid] = up or nil
    body = body:gsub("__STEP__", up and "1" or "-1")
  end
  local path = cfg.path:gsub("__UID__", tostring(uid))
  return wrk.format(cfg.method, path, headers, body)
end

function response(status, headers, body)
  local failed = status < 200 or status > 299
  if not failed and body then
    if body:find('"errors"', 1, true) then
      failed = true
    elseif cfg.expect and not body:find(cfg.expect, 1, true) then
      failed = true
    end
  end
  if failed then
    bad = bad + 1
    if not sample then sample = status .. " " .. string.sub(body or "", 1, 300) end
  end
end

function done(summary, latency, requests)
  local bad_total, sample_out = 0, nil
  for _, t in ipairs(threads) do
    bad_total = bad_total + (t:get("bad") or 0)
    sample_out = sample_out or t:get("sample")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d,'
      .. ' "socket_errors": %d, "bad": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, bad_total))
  if sample_out then io.write("WRKSAMPLE " .. string.gsub(sample_out, "\n", " ") .. "\n") end
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(value: str) -> str:
    """A Lua long-bracket literal whose level no `]==]` in the value can close early."""
    level = 0
    while f"]{'=' * level}]" in value:
        level += 1
    eq = "=" * level
    return f"[{eq}[{value}]{eq}]"


def _lua_value(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        items = ", ".join(f"[ {_lua_string(k)} ] = {_lua_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    return _lua_string(str(value))


def lua_script(spec: RequestSpec, threads: int) -> str:
    config = {**asdict(spec), "threads": threads}
    fields = ",\n  ".join(f"{k} = {_lua_value(v)}" for k, v in config.items() if v is not None)
    return f"cfg = {{\n  {fields}\n}}\n{LUA_BODY}"


def run_wrk(
    spec: RequestSpec,
    port: int,
    seconds: float,
    connections: int,
    threads: int,
    workdir: Path,
    name: str,
) -> LoadResult:
    script = workdir / f"{name}.lua"
    script.write_text(lua_script(spec, threads))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    figures: dict[str, Any] | None = None
    sample = None
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            figures = json.loads(line[len("WRKJSON ") :])
        elif line.startswith("WRKSAMPLE "):
            sample = line[len("WRKSAMPLE ") :]
    if figures is None:
        raise RuntimeError(f"wrk gave no figures: {done.stdout[-500:]} {done.stderr[-500:]}")
    return LoadResult(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        errors=figures["bad"] + figures["socket_errors"],
        socket_errors=figures["socket_errors"],
        sample=sample,
        driver="wrk",
    )


def run_python(
    spec: RequestSpec, port: int, seconds: float, connections: int, workdir: Path, name: str
) -> LoadResult:
    spec_file = workdir / f"{name}.json"
    spec.dump(spec_file)
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "--spec",
        str(spec_file),
        "--port",
        str(port),
        "--seconds",
        str(seconds),
        "--connections",
        str(connections),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"bench.load failed: {done.stderr[-1000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures.pop("rps", None)
    return LoadResult(**figures)


def run_load(
    driver: str,
    spec: RequestSpec,
    port: int,
    seconds: float,
    connections: int,
    threads: int,
    workdir: Path,
    name: str,
) -> LoadResult:
    if driver == "wrk":
        return run_wrk(spec, port, seconds, connections, threads, workdir, name)
    return run_python(spec, port, seconds, connections, workdir, name)
