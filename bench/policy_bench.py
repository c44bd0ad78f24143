"""Role-policy benchmark: load + validate a big chain, then evaluate logins.

Generates (into a temporary directory, as YAML files like an administrator would write)
a chain of 200 organisations, 5,000 teams and 100,000 persons whose memberships come from
upstream groups, attribute matches, explicit person lists and on-call rotas; then reports
load + validate time, memory, and evaluation latency p50/p99 over random logins at random
moments. Targets on the reference machine: load < 5 s, evaluation p99 < 200 µs.

    .venv/bin/python bench/policy_bench.py [--orgs 200] [--teams 5000] [--persons 100000]
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from idbroker.policy import PersonFacts, check_policy

CLIENTS = 20
SCOPES_PER_CLIENT = 8
ROTAS = ("avond-nacht-weekend", "kantooruren", "weekend", "nacht")


def generate(directory: Path, *, orgs: int, teams: int, persons: int, seed: int = 7) -> list[PersonFacts]:
    """Write the chain; return the population (as their IdPs would describe them)."""
    rng = random.Random(seed)
    kinds = ["government", "private", "incidental"]
    lines = ["organisations:"]
    for o in range(orgs):
        kind = kinds[2] if o % 10 == 9 else kinds[o % 2]
        lines += [f"  - id: org-{o:03d}", f"    name: Organisatie {o}", f"    kind: {kind}",
                  f"    domains: [org{o}.example]", "    idp:", "      protocol: oidc",
                  f"      issuer: https://idp.org{o}.example", "      client_id: idbroker"]
    (directory / "organisations.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    lines = ["clients:"]
    for c in range(CLIENTS):
        lines += [f"  - id: app-{c:02d}", f"    name: Ketenapplicatie {c}",
                  f"    redirect_uris: [\"https://app{c}.example/cb\"]", f"    jwks_uri: https://app{c}.example/jwks",
                  f"    partnership_system: {'true' if c % 4 == 0 else 'false'}",
                  f"    availability: {'24x7' if c % 3 == 0 else 'office-hours'}",
                  "    application_scopes:"]
        lines += [f"      - app{c}.scope{s}" for s in range(SCOPES_PER_CLIENT)]
    (directory / "clients.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    (directory / "rotas.yaml").write_text("""rotas:
  - id: avond-nacht-weekend
    name: Avond, nacht en weekend
    windows:
      - {days: [mon-thu], from: "17:00", until: "08:00"}
      - {days: [fri], from: "17:00", until: "24:00"}
      - {days: [sat-sun], from: "00:00", until: "24:00"}
      - {days: [mon], from: "00:00", until: "08:00"}
  - id: kantooruren
    name: Kantooruren
    windows: [{days: [mon-fri], from: "08:00", until: "17:00"}]
  - id: weekend
    name: Weekend
    windows: [{days: [fri], from: "17:00", until: "08:00"}, {days: [sat], from: "08:00", until: "24:00"},
              {days: [sun], from: "00:00", until: "24:00"}]
  - id: nacht
    name: Nacht
    windows: [{days: [mon-sun], from: "23:00", until: "07:00"}]
""", encoding="utf-8")

    teams_per_org = teams // orgs
    persons_per_org = persons // orgs
    population: list[PersonFacts] = []
    for o in range(orgs):
        incidental = o % 10 == 9
        # Each person: 1-3 teams of their organisation; how they become a member varies.
        explicit: dict[int, list[str]] = {t: [] for t in range(teams_per_org)}
        on_rota: dict[int, list[str]] = {t: [] for t in range(teams_per_org)}
        for p in range(persons_per_org):
            subject = f"o{o}-p{p:05d}"
            groups: list[str] = []
            attributes: dict[str, str] = {"afdeling": f"afd-{rng.randrange(teams_per_org)}"}
            for t in rng.sample(range(teams_per_org), rng.choice((1, 1, 2, 2, 3))):
                way = rng.random()
                if way < 0.55:
                    groups.append(f"team-{t}")
                elif way < 0.80:
                    explicit[t].append(subject)
                else:
                    on_rota[t].append(subject)
            groups += [f"other-{rng.randrange(50)}" for _ in range(rng.randrange(4))]  # unrelated groups
            population.append(PersonFacts(organisation=f"org-{o:03d}", subject=subject,
                                          email=f"{subject}@org{o}.example", groups=frozenset(groups),
                                          attributes=attributes))
        lines = ["teams:"]
        for t in range(teams_per_org):
            team_id = f"org-{o:03d}-team-{t:02d}"
            lines += [f"  - id: {team_id}", f"    organisation: org-{o:03d}",
                      f"    name: Team {t} van organisatie {o}", "    roles:"]
            for r in range(2):
                level = "high" if r and t % 7 == 0 else "substantial"
                lines += [f"      - id: rol-{r}", f"        min_level: {level}", "        grants:"]
                # Incidental parties never get partnership systems (the loader would refuse it).
                allowed = [c for c in range(CLIENTS) if not (incidental and c % 4 == 0)]
                for c in rng.sample(allowed, 3):
                    scopes = ", ".join(f"app{c}.scope{s}" for s in rng.sample(range(SCOPES_PER_CLIENT), 3))
                    lines.append(f"          app-{c:02d}: [{scopes}]")
            lines += ["    members:", f"      - group: team-{t}", "        roles: [rol-0]",
                      f"      - attribute: {{name: afdeling, equals: afd-{t}}}", "        roles: [rol-0]",
                      "        valid_from: 2020-01-01"]
            if explicit[t]:
                lines += [f"      - subjects: [{', '.join(explicit[t])}]", "        valid_until: 2099-12-31"]
            if on_rota[t]:
                lines += [f"      - subjects: [{', '.join(on_rota[t])}]",
                          f"        rota: {ROTAS[t % len(ROTAS)]}"]
        (directory / f"teams-org-{o:03d}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return population


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=200)
    parser.add_argument("--teams", type=int, default=5000)
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--logins", type=int, default=20_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
        directory = Path(tmp)
        started = time.perf_counter()
        population = generate(directory, orgs=args.orgs, teams=args.teams, persons=args.persons)
        size = sum(path.stat().st_size for path in directory.glob("*.yaml"))
        print(f"generated {args.orgs} organisations, {args.teams} teams, {args.persons} persons: "
              f"{len(list(directory.glob('*.yaml')))} files, {size / 2**20:.1f} MiB "
              f"({time.perf_counter() - started:.1f} s)")

        gc.collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        report = check_policy(directory, environ={})
        load_seconds = time.perf_counter() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if report.policy is None:
            print("policy does not pass check:", *report.problems[:20], sep="\n  ")
            return 1
        policy = report.policy
        rules = sum(len(team.members) for team in policy.teams.values())
        print(f"load + validate + index: {load_seconds:.2f} s  ({len(policy.teams)} teams, "
              f"{rules} member rules; target < 5 s)")
        print(f"peak RSS: {rss_after / 1024:.0f} MiB "
              f"(grew {(rss_after - rss_before) / 1024:.0f} MiB while loading)")

        del report, policy
        gc.collect()
        tracemalloc.start()
        report = check_policy(directory, environ={})
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        policy = report.policy
        assert policy is not None
        print(f"tracemalloc: policy held {current / 2**20:.0f} MiB after loading, "
              f"peak {peak / 2**20:.0f} MiB during loading")

        rng = random.Random(11)
        clients = sorted(policy.clients)
        start = datetime(2026, 1, 5, tzinfo=UTC)
        logins = [(rng.choice(population), rng.choice(clients),
                   start + timedelta(minutes=rng.randrange(60 * 24 * 365))) for _ in range(args.logins)]
        for person, client, now in logins[:2000]:  # warm up
            policy.evaluate(person, client, now)
        timings = []
        teams_seen = scopes_seen = 0
        gc.disable()
        for person, client, now in logins:
            begin = time.perf_counter_ns()
            decision = policy.evaluate(person, client, now)
            timings.append(time.perf_counter_ns() - begin)
            teams_seen += len(decision.teams)
            scopes_seen += len(decision.scopes.get(client, ()))
        gc.enable()
        timings.sort()
        p50 = timings[len(timings) // 2] / 1000
        p99 = timings[int(len(timings) * 0.99)] / 1000
        print(f"evaluate: {len(timings)} logins, p50 {p50:.1f} µs, p99 {p99:.1f} µs, "
              f"max {timings[-1] / 1000:.1f} µs, mean {statistics.fmean(timings) / 1000:.1f} µs "
              f"(target p99 < 200 µs); "
              f"on average {teams_seen / len(timings):.2f} teams and {scopes_seen / len(timings):.2f} scopes "
              f"on the client per login")
        timings = []
        for person, client, now in logins[:5000]:
            decision = policy.evaluate(person, client, now)
            begin = time.perf_counter_ns()
            for team_id in decision.teams_for_client[:1]:
                decision.for_team(team_id).scopes_for(client)
            timings.append(time.perf_counter_ns() - begin)
        timings.sort()
        print(f"for_team + scopes_for: p50 {timings[len(timings) // 2] / 1000:.1f} µs, "
              f"p99 {timings[int(len(timings) * 0.99)] / 1000:.1f} µs")
        ok = load_seconds < 5 and p99 < 200
        print("targets met" if ok else "TARGETS MISSED")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
