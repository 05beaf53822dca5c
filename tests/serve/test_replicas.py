"""Two real ``deepseek serve`` replicas share one PostgreSQL job table; one is killed with ``kill -9`` while it
runs a job, and every accepted job still ends exactly once: succeeded with its own result, the killed job
rerun by the survivor (``attempts`` 2), no job lost, none run again while its replica lived."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import postgres
from tests.serve.conftest import ServerProcess

postgres_server, postgres_url = postgres.postgres_server, postgres.postgres_url  # the fixtures, for this module

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

LEASE_S = 1.5  # --job-lease-s: a killed replica's jobs are taken over this long after its last heartbeat
SLOW_S = 6.0  # a slow job (probe: x[0] == -1 sleeps x[1] s) outlives several leases
TABLE = "deepseek_serve_jobs"




def owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])  # owner ids are host:pid:uuid


def test_every_job_ends_exactly_once_when_a_replica_is_killed_mid_job(model_dir: Path, postgres_url: str):
    args = ("--jobs-db", postgres_url, "--job-lease-s", str(LEASE_S))
    replicas = [ServerProcess(model_dir, *args), ServerProcess(model_dir, *args)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda r: r.start(), replicas))
        clients = [r.client() for r in replicas]
        by_pid = {r.proc.pid: i for i, r in enumerate(replicas)}
        expected: dict[str, list] = {}  # every accepted job -> its instances

        def submit(i: int, instances: list) -> str:
            job_id = clients[i].submit("probe", instances)
            expected[job_id] = instances
            return job_id

        def claimed_by(job_id: str) -> int | None:
            """The pid of the replica running ``job_id`` (None while it is queued)."""
            rows = postgres.run_sql(postgres_url, f"SELECT owner FROM {TABLE} WHERE id=%s AND status='running'", job_id)
            return owner_pid(rows[0][0]) if rows else None

        # a slow job running on each replica: submit to the replica that holds none yet (a submit wakes its
        # own workers at once; the other replica polls every second, so it rarely wins the claim)
        slow_on: dict[int, str] = {}  # replica index -> the slow job it runs
        for _ in range(4):
            target = next(i for i in (0, 1) if i not in slow_on)
            slow_id = submit(target, [[-1, SLOW_S, 0, 0]])
            pid = postgres.poll(lambda j=slow_id: claimed_by(j), 60, "a replica to claim the slow job")
            slow_on.setdefault(by_pid[pid], slow_id)
            if len(slow_on) == 2:
                break
        assert len(slow_on) == 2, "both slow jobs went to one replica four times"
        for i in range(12):  # fast jobs to both replicas, queued behind or batched with the slow ones
            submit(i % 2, [[i, 1, 1, 1], [i, 2, 2, 2]])

        def both_slow_jobs_outlived_two_leases() -> bool:  # on the database's clock, which the leases use
            ages = postgres.run_sql(postgres_url, f"SELECT EXTRACT(EPOCH FROM clock_timestamp()) - started, attempts FROM {TABLE} "
                       "WHERE id = ANY(%s) AND status='running'", list(slow_on.values()))  # fmt: skip
            assert len(ages) == 2 and all(attempts == 1 for _, attempts in ages), ages  # live leases: not taken over
            return all(float(age) > 2 * LEASE_S for age, _ in ages)

        postgres.poll(both_slow_jobs_outlived_two_leases, 60, "the slow jobs to outlive two leases")
        victim, survivor = 0, 1
        replicas[victim].kill()  # SIGKILL, mid-job: no close(), its leases just stop being renewed
        ((killed_at,),) = postgres.run_sql(postgres_url, "SELECT EXTRACT(EPOCH FROM clock_timestamp())")
        for i in range(4):  # accepted after the failover too
            submit(survivor, [[100 + i, 0, 0, 0]])

        def all_final() -> bool:
            return all(clients[survivor].job(j)["status"] in ("succeeded", "failed", "cancelled") for j in expected)

        postgres.poll(all_final, 120, "every job to end")
        took_over = replicas[survivor].wait_for_output("whose replica's lease expired", 30)
        assert took_over, replicas[survivor].output_tail()
        rows = postgres.run_sql(postgres_url, f"SELECT id, status, result, attempts, isolate, owner, finished FROM {TABLE} "
                   "ORDER BY created")  # fmt: skip
        for job_id, status, _, attempts, isolate, owner, _ in rows:  # shown with -s: the docs quote a run
            print(f"{job_id[:8]} {status} attempts={attempts} isolate={isolate} pid={owner_pid(owner)}")
        assert sorted(r[0] for r in rows) == sorted(expected)  # none lost, none extra
        victim_pid = replicas[victim].proc.pid
        for job_id, status, result, attempts, isolate, owner, finished in rows:
            assert status == "succeeded", (job_id, status)
            sums = [row[0] for row in json.loads(result)]
            assert sums == [pytest.approx(sum(x)) for x in expected[job_id]]
            assert attempts == 1 + isolate  # a second run only for a job taken over from the killed replica
            if owner_pid(owner) == victim_pid:
                assert finished < killed_at  # the killed replica recorded nothing after its death
        final = {r[0]: r for r in rows}
        killed_job, live_job = final[slow_on[victim]], final[slow_on[survivor]]
        assert (killed_job[3], killed_job[4], owner_pid(killed_job[5])) == (2, True, replicas[survivor].proc.pid)
        assert (live_job[3], live_job[4]) == (1, False)  # ran past its lease while the other replica lived
    finally:
        for r in replicas:
            r.kill()
