"""The NATS users of deploy/nats/nats-server.conf against a real nats-server.

    nats_permissions.py nats://127.0.0.1:PORT

The server runs that config (run.sh starts it on a spare loopback port, with one password per
user in NATS_<USER>_PASSWORD). Each service's user then does what its service does, with the
same JetStream API subjects async-nats uses (stream info/create, consumer info/create with the
filter in the subject, pull, ack, publish with an ack, look-ups), and every one of those must
go through. Then each user tries what it must not do (another worker's commands, consumer or
events, a stream delete or purge, reading every command), and every one of those must be
refused with a permissions violation.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import nats
from nats.aio.client import Client

STREAMS = {
    "SAGA_CMD": ("cmd.>", "workqueue"),
    "SAGA_REPLY": ("reply.>", "workqueue"),
    "DOMAIN_EVT": ("evt.>", "limits"),
    "DLQ": ("dlq.>", "limits"),
    "NOTIFY": ("notify.>", "workqueue"),
}
WORKERS = ["mission", "reward", "wallet", "gift", "telegram"]
API = "$JS.API"
WAIT = 2.0


class User:
    """One connection as one NATS user, recording the permission errors the server sends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str) -> "User":
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await nats.connect(
            url,
            user=self.name,
            password=os.environ[f"NATS_{self.name.upper()}_PASSWORD"],
            error_cb=on_error,
            allow_reconnect=False,
            name=f"permission-check-{self.name}",
        )
        return self

    def violations(self, subject: str) -> list[str]:
        """The permission errors about `subject` (nats-py lower-cases the server's message)."""
        quoted = f'"{subject}"'.lower()
        return [e for e in self.errors if "permissions violation" in e.lower() and quoted in e.lower()]


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def result(self, ok: bool, what: str) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}")

    async def allowed_request(self, user: User, subject: str, body: dict | bytes = b"") -> dict | None:
        """A request that must reach its responder (a JetStream API error answer still counts:
        the API was reached)."""
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            msg = await user.nc.request(subject, payload, timeout=WAIT)
        except Exception as error:  # timeout: refused, or nobody answered
            self.result(False, f"{user.name} may request {subject}: {error!r} {user.violations(subject)}")
            return None
        self.result(not user.violations(subject), f"{user.name} may request {subject}")
        try:
            return json.loads(msg.data) if msg.data else {}
        except ValueError:
            return {"_msg": msg}

    async def allowed_publish(self, user: User, subject: str, payload: bytes = b"{}") -> None:
        """A JetStream publish that must be stored (the stream answers with its ack)."""
        answer = await self.allowed_request(user, subject, payload)
        if answer is not None:
            self.result("stream" in answer and "error" not in answer, f"{user.name}: JetStream stores {subject}: {answer}")

    async def allowed_core(self, user: User, subject: str, listen: str) -> None:
        """A core-NATS publish (no stream) that the same user, subscribed to `listen`, receives,
        with no permission error either way."""
        sub = await user.nc.subscribe(listen)
        await user.nc.flush()
        await user.nc.publish(subject, b"{}")
        await user.nc.flush()
        try:
            msg = await sub.next_msg(timeout=WAIT)
            got = msg.subject == subject
        except Exception:
            got = False
        clean = not user.violations(subject) and not user.violations(listen)
        self.result(got and clean, f"{user.name} publishes {subject} and hears it on {listen}")
        await sub.unsubscribe()

    async def denied_publish(self, user: User, subject: str) -> None:
        await user.nc.publish(subject, b"{}")
        await user.nc.flush()
        await asyncio.sleep(0.05)
        self.result(bool(user.violations(subject)), f"{user.name} must not publish {subject}")

    async def denied_subscribe(self, user: User, subject: str) -> None:
        sub = await user.nc.subscribe(subject)
        await user.nc.flush()
        await asyncio.sleep(0.05)
        self.result(bool(user.violations(subject)), f"{user.name} must not subscribe {subject}")
        await sub.unsubscribe()

    async def consumer(self, user: User, stream: str, durable: str, filter_subject: str) -> None:
        """What runtime::jetstream::ensure_consumer does: stream info, consumer info, create."""
        await self.allowed_request(user, f"{API}.STREAM.INFO.{stream}")
        await self.allowed_request(user, f"{API}.CONSUMER.INFO.{stream}.{durable}")
        answer = await self.allowed_request(
            user,
            f"{API}.CONSUMER.CREATE.{stream}.{durable}.{filter_subject}",
            {
                "stream_name": stream,
                "config": {
                    "durable_name": durable,
                    "filter_subject": filter_subject,
                    "ack_policy": "explicit",
                    "ack_wait": 30_000_000_000,
                    "max_deliver": 20,
                },
                "action": "create",
            },
        )
        if answer is not None:
            self.result("error" not in answer, f"{user.name} creates consumer {stream}/{durable}: {answer}")

    async def pull_and_ack(
        self, user: User, stream: str, durable: str, expect_subject: str, ack: bool = True
    ) -> None:
        """Pull one message from the durable, as a pull consumer does (the message arrives on the
        puller's own inbox under its original subject), and ack it on its $JS.ACK reply subject."""
        subject = f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        inbox = user.nc.new_inbox()
        sub = await user.nc.subscribe(inbox, max_msgs=1)
        await user.nc.publish(subject, json.dumps({"batch": 1, "expires": 1_000_000_000}).encode(), reply=inbox)
        try:
            msg = await sub.next_msg(timeout=WAIT)
        except Exception as error:
            self.result(False, f"{user.name} pulls from {stream}/{durable}: {error!r} {user.violations(subject)}")
            return
        got = msg.subject == expect_subject and (msg.reply or "").startswith(f"$JS.ACK.{stream}.{durable}.")
        self.result(got, f"{user.name} pulls {expect_subject} from {stream}/{durable} (got {msg.subject!r})")
        if got and ack:
            await user.nc.publish(msg.reply, b"+ACK")
            await user.nc.flush()
            await asyncio.sleep(0.05)
            self.result(not user.violations(msg.reply), f"{user.name} acks on {msg.reply}")


async def wait_for_interest(user: User, subject: str) -> None:
    """A subscription made on one connection can reach another connection's publishes a moment
    later (the server answers "no responders" meanwhile): wait until it does, at most 2 s."""
    for _ in range(40):
        try:
            await user.nc.request(subject, b"{}", timeout=0.5)
            return
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.05)
        except nats.errors.TimeoutError:
            return


async def run(url: str) -> int:
    c = Checks()
    orchestrator = await User("orchestrator").connect(url)
    users = {name: await User(name).connect(url) for name in WORKERS + ["mypage"]}

    # Every service creates the streams when they are missing: info, then create.
    for stream, (subjects, retention) in STREAMS.items():
        await c.allowed_request(orchestrator, f"{API}.STREAM.INFO.{stream}")
        answer = await c.allowed_request(
            orchestrator,
            f"{API}.STREAM.CREATE.{stream}",
            {
                "name": stream,
                "subjects": [subjects],
                "retention": retention,
                "storage": "file",
                "num_replicas": 1,
                "duplicate_window": 120_000_000_000,
            },
        )
        if answer is not None:
            c.result("error" not in answer, f"orchestrator creates stream {stream}: {answer}")
    for user in users.values():
        for stream in STREAMS:
            await c.allowed_request(user, f"{API}.STREAM.INFO.{stream}")
            await c.allowed_request(user, f"{API}.STREAM.CREATE.{stream}", {"name": stream})

    # The orchestrator: its reply consumer, commands to every worker, its own events, dead letters.
    await c.consumer(orchestrator, "SAGA_REPLY", "orchestrator", "reply.>")
    for worker in WORKERS:
        await c.allowed_publish(orchestrator, f"cmd.{worker}.check")
    await c.allowed_publish(orchestrator, "evt.saga.SagaFinished")
    await c.allowed_publish(orchestrator, "dlq.reply.mission_reward")
    dlq = await c.allowed_request(orchestrator, f"{API}.STREAM.MSG.GET.DLQ", {"seq": 1})
    if dlq is not None:
        c.result("message" in dlq, f"orchestrator reads dead letter 1: {dlq}")
    await c.allowed_request(orchestrator, f"{API}.STREAM.MSG.DELETE.DLQ", {"seq": 1})
    # A saga's state changed: announced to the waiters of every orchestrator (core NATS).
    await c.allowed_core(orchestrator, "watch.saga.0191e0a4-0000-7000-8000-000000000000", "watch.saga.>")

    # Every worker: its command consumer, replies, its events, dead letters, its look-ups.
    for worker in WORKERS:
        user = users[worker]
        await c.consumer(user, "SAGA_CMD", f"worker-{worker}", f"cmd.{worker}.>")
        await c.pull_and_ack(user, "SAGA_CMD", f"worker-{worker}", f"cmd.{worker}.check")
        await c.allowed_publish(user, f"reply.mission_reward.{worker}")
        await c.allowed_publish(user, f"evt.{worker}.Checked")
        await c.allowed_publish(user, f"dlq.cmd.{worker}.check")

        async def answer(msg, worker=worker):
            await msg.respond(json.dumps({"found": True, "by": worker}).encode())

        sub = await user.nc.subscribe(f"svc.{worker}.check", queue=f"svc-{worker}", cb=answer)
        await user.nc.flush()
        await wait_for_interest(orchestrator, f"svc.{worker}.check")
        looked_up = await c.allowed_request(orchestrator, f"svc.{worker}.check", {"id": "x"})
        c.result(bool(looked_up) and looked_up.get("by") == worker, f"{worker} answers look-ups: {looked_up}")
        await sub.unsubscribe()

    # The orchestrator pulls the replies.
    await c.pull_and_ack(orchestrator, "SAGA_REPLY", "orchestrator", "reply.mission_reward.mission")

    # gift queues Telegram messages; telegram consumes them (workers/src/telegram/queue.rs).
    await c.allowed_publish(users["gift"], "notify.telegram")
    await c.consumer(users["telegram"], "NOTIFY", "telegram-notify", "notify.telegram")
    await c.pull_and_ack(users["telegram"], "NOTIFY", "telegram-notify", "notify.telegram")

    # The wallet books version-1 rewards from the reward context's events (workers/src/wallet).
    await c.consumer(users["wallet"], "DOMAIN_EVT", "wallet-rewards-v1", "evt.reward.>")
    await c.pull_and_ack(users["wallet"], "DOMAIN_EVT", "wallet-rewards-v1", "evt.reward.Checked")

    # mypage reads every domain event through consumers of its own (ordered, without acks:
    # its view keeps its position).
    await c.consumer(users["mypage"], "DOMAIN_EVT", "mypage-check", "evt.>")
    await c.pull_and_ack(users["mypage"], "DOMAIN_EVT", "mypage-check", "evt.saga.SagaFinished", ack=False)
    await c.allowed_publish(users["mypage"], "dlq.evt.saga.SagaFinished")
    await c.denied_publish(users["mypage"], f"{API}.CONSUMER.MSG.NEXT.DOMAIN_EVT.wallet-rewards-v1")
    await c.denied_publish(users["mypage"], f"{API}.CONSUMER.DELETE.DOMAIN_EVT.wallet-rewards-v1")
    await c.denied_publish(users["mypage"], "dlq.cmd.mission.complete")

    # What nobody may do.
    await c.denied_publish(orchestrator, "reply.mission_reward.reward")
    await c.denied_publish(orchestrator, "evt.mission.MissionUpdated")
    await c.denied_publish(orchestrator, "notify.telegram.x")
    await c.denied_publish(orchestrator, f"{API}.STREAM.DELETE.SAGA_CMD")
    await c.denied_publish(orchestrator, f"{API}.STREAM.PURGE.SAGA_REPLY")
    await c.denied_publish(orchestrator, f"{API}.STREAM.UPDATE.SAGA_CMD")
    await c.denied_publish(orchestrator, f"{API}.CONSUMER.CREATE.SAGA_CMD.worker-mission.cmd.mission.>")
    await c.denied_publish(orchestrator, f"{API}.CONSUMER.MSG.NEXT.SAGA_CMD.worker-mission")
    await c.denied_subscribe(orchestrator, "cmd.>")
    for worker in WORKERS:
        user = users[worker]
        other = next(w for w in WORKERS if w != worker)
        await c.denied_publish(user, f"cmd.{worker}.complete")
        await c.denied_publish(user, f"reply.mission_reward.{other}")
        await c.denied_publish(user, f"cmd.{other}.grant")
        await c.denied_publish(user, f"evt.{other}.Forged")
        await c.denied_publish(user, "evt.saga.SagaFinished")
        await c.denied_publish(user, f"svc.{other}.check")
        await c.denied_publish(user, "_INBOX.not-a-reply")
        await c.denied_publish(user, f"{API}.CONSUMER.CREATE.SAGA_CMD.worker-{other}.cmd.{other}.>")
        await c.denied_publish(user, f"{API}.CONSUMER.MSG.NEXT.SAGA_CMD.worker-{other}")
        await c.denied_publish(user, f"{API}.CONSUMER.DELETE.SAGA_CMD.worker-{worker}")
        await c.denied_publish(user, f"{API}.STREAM.DELETE.SAGA_CMD")
        await c.denied_publish(user, f"$JS.ACK.SAGA_CMD.worker-{other}.1.1.1.1.0")
        await c.denied_subscribe(user, "cmd.>")
        await c.denied_subscribe(user, f"svc.{other}.>")
        await c.denied_publish(user, "watch.saga.0191e0a4-0000-7000-8000-000000000000")
        await c.denied_subscribe(user, "watch.>")
        if worker != "gift":
            await c.denied_publish(user, "notify.telegram.x")
    await c.denied_publish(users["gift"], f"{API}.CONSUMER.CREATE.NOTIFY.telegram-notify.notify.telegram")
    await c.denied_publish(users["gift"], f"{API}.CONSUMER.MSG.NEXT.NOTIFY.telegram-notify")
    await c.denied_publish(users["mission"], f"{API}.CONSUMER.CREATE.DOMAIN_EVT.wallet-rewards-v1.evt.reward.>")
    await c.denied_publish(users["mission"], f"{API}.CONSUMER.CREATE.DOMAIN_EVT.mypage-projection.evt.>")
    await c.denied_publish(users["mypage"], "reply.mission_reward.mission")
    await c.denied_publish(users["mypage"], "evt.mypage.Forged")
    await c.denied_publish(users["mypage"], "cmd.mission.complete")
    await c.denied_subscribe(users["mypage"], "evt.>")
    await c.denied_publish(users["mypage"], "watch.saga.0191e0a4-0000-7000-8000-000000000000")
    await c.denied_subscribe(users["mypage"], "watch.>")

    for user in [orchestrator, *users.values()]:
        await user.nc.close()
    print(f"nats permissions: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(run(sys.argv[1])))
