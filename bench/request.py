#!/usr/bin/env python3
"""Benchmark (issue #3): `tpa request` end to end against a local moto server, vs `aws sts
assume-role` (awscli) and a bare HTTP POST of the same AssumeRole with curl (the floor).

The three run alternately, one call each per round, so that drift on the machine hits all three
alike; medians are reported, with tpa's time split into phases measured inside tpa by the test
build (TPA_TEST_TIMING=1): the mint (the STS call, and any wait for the client and base credentials
prepared on their own thread) and the rest (policy, signing, ledger writes, keyring).

Run through bench/request.sh, which sets up moto, a repository, awscli and the keyring session.
"""
import json, os, statistics, subprocess, sys, time

rounds = int(os.environ.get("ROUNDS", "30"))
tpa, repo, endpoint, role_arn, aws = sys.argv[1:6]
env = dict(os.environ)

def timed(cmd, **kw):
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    elapsed = (time.perf_counter() - start) * 1000
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {out.stderr}")
    return elapsed, out

curl = ["curl", "-sf", "-X", "POST", endpoint,
        "-H", "Authorization: AWS4-HMAC-SHA256 Credential=AKIABENCH/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0",
        "--data-urlencode", "Action=AssumeRole", "--data-urlencode", "Version=2011-06-15",
        "--data-urlencode", f"RoleArn={role_arn}", "--data-urlencode", "RoleSessionName=bench-curl",
        "--data-urlencode", "DurationSeconds=900"]
awscli = [aws, "sts", "assume-role", "--role-arn", role_arn, "--role-session-name", "bench-awscli",
          "--duration-seconds", "900", "--endpoint-url", endpoint, "--output", "json"]
request = [tpa, "-C", repo, "request", "--role", "bench", "--reason", "BENCH-1: request benchmark",
           "--ttl", "15m", "--json"]
# ENDED=1: each grant is revoked after it is measured, and the next request is made on a new commit
# (neither is timed), so that the keyring holds only live grants and a commit's note only its own
# grant, as in use. Without it every round's credentials stay in the keyring, where gnome-keyring
# rewrites a file one grant larger each round on every write, and every record goes to the note of
# one commit, which each append rewrites whole.
ended = os.environ.get("ENDED") == "1"
def end(out):
    if ended:
        grant_id = json.loads(out.stdout)["grant_id"]
        for cmd in ([tpa, "-C", repo, "revoke", grant_id, "--reason", "BENCH-1: measured", "--json"],
                    ["git", "-C", repo, "commit", "-q", "--allow-empty", "-m", f"after {grant_id}"]):
            subprocess.run(cmd, capture_output=True, check=True)
# TPA_BASE: another build of tpa, run in the same rounds, as the baseline.
base = os.environ.get("TPA_BASE")
baseline = [base] + request[1:] if base else None

times = {"tpa": [], "awscli": [], "curl": [], "tpa_sts": [], "base": []}
for _ in range(3):  # warm-up: page cache, moto's first-call imports
    timed(curl); timed(awscli); end(timed(request, env={**env, "TPA_TEST_TIMING": "1"})[1])
    if baseline: end(timed(baseline)[1])
for round in range(rounds):
    t, _ = timed(curl); times["curl"].append(t)
    t, _ = timed(awscli); times["awscli"].append(t)
    if baseline and round % 2 == 0:  # before this build in even rounds, after it in odd ones
        t, base_out = timed(baseline); times["base"].append(t); end(base_out)
    t, out = timed(request, env={**env, "TPA_TEST_TIMING": "1"}); times["tpa"].append(t); end(out)
    if baseline and round % 2 == 1:
        t, base_out = timed(baseline); times["base"].append(t); end(base_out)
    split = dict(kv.split("=") for kv in out.stderr.split() if kv.endswith(tuple("0123456789")) and "_ms=" in kv)
    times["tpa_sts"].append(float(split["sts_ms"]))
    for phase, value in split.items():
        times.setdefault(phase, []).append(float(value))

m = {k: statistics.median(v) for k, v in times.items() if v}
print(f"rounds: {rounds} (alternating), medians in ms" + (", each grant revoked after it is measured, the next on a new commit" if ended else ""))
print(f"  curl POST (floor)       {m['curl']:8.1f}")
print(f"  aws sts assume-role     {m['awscli']:8.1f}")
print(f"  tpa request             {m['tpa']:8.1f}   (mint {m['tpa_sts']:.1f}: the STS call and any wait for the prepared client; the rest {m['tpa'] - m['tpa_sts']:.1f})")
if baseline:
    print(f"  TPA_BASE request        {m['base']:8.1f}   (this build is {m['base'] / m['tpa']:.2f}x as fast)")
phases = [k for k in times if k.endswith("_ms")]
print("  tpa phases (medians): " + ", ".join(f"{k[:-3]} {statistics.median(times[k]):.1f}" for k in phases))
print(f"  awscli / tpa            {m['awscli'] / m['tpa']:8.1f}x  (aim: >= 20x)")
print(f"  tpa / curl              {m['tpa'] / m['curl']:8.2f}x  (aim: <= 2x)")
