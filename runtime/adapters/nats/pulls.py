"""Pulling from a set of JetStream pull consumers by hand, on one inbox.

Why not ``nats-py``'s ``fetch``: a pull request may bring its entries after the fetch that
sent it stopped waiting. Here they land in a per-consumer buffer and the next ``pull`` hands
them out, oldest first over all consumers (by stream sequence): an entry is never dropped in
transit, where the server would count it delivered and bring it back only after its ack
wait. Each consumer has at most one live request; a request whose answer was lost is
forgotten after its lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from runtime.adapters.nats.connection import MSG_ID
from runtime.adapters.nats.errors import ConsumerGone

HISTORY_WAIT_S = 5.0  # a no-wait pull is answered at once; this only bounds a lost answer
_ACK_PREFIX = "$JS.ACK."


class Arrived:
    """One entry a pull brought."""

    __slots__ = ("data", "delivered", "event_id", "ms", "reply", "seq")

    def __init__(
        self, seq: int, ms: int, delivered: int, data: bytes, reply: str, event_id: str
    ) -> None:
        self.seq = seq
        self.ms = ms
        self.delivered = delivered
        self.data = data
        self.reply = reply
        self.event_id = event_id


class _Lane:
    """One consumer's pulls: its live request and what arrived and was not handed out."""

    __slots__ = ("api", "buffer", "deadline", "expected", "gone", "live", "name", "reply", "seen")

    def __init__(self, api: str, name: str, reply: str, seen: int) -> None:
        self.api = api
        self.name = name
        self.reply = reply
        self.live = False
        self.expected = 0
        self.deadline = 0.0
        self.gone = False
        self.seen = seen  # the highest sequence received (or handled): later copies drop
        self.buffer: deque[Arrived] = deque()


class Puller:
    """The lanes of one positioning: a consumer per subject, their requests and buffers."""

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}  # subject -> lane
        self._by_name: dict[str, _Lane] = {}
        self._by_reply: dict[str, _Lane] = {}
        self._inbox: NatsSubscription | None = None
        self._arrived = asyncio.Event()

    @property
    def consumers(self) -> dict[str, str]:
        """subject -> the consumer pulled from."""
        return {subject: lane.name for subject, lane in self._lanes.items()}

    async def start(
        self, nc: Client, stream: str, consumers: Mapping[str, str], seen: Mapping[str, int]
    ) -> None:
        """Pull from these consumers (subject -> name) from now on, on a new inbox; entries
        at or below ``seen`` (per subject) are dropped on arrival."""
        await self.stop()
        inbox = nc.new_inbox()
        self._inbox = await nc.subscribe(inbox + ".*", cb=self._on_message)
        self._lanes = {}
        for index, (subject, name) in enumerate(consumers.items()):
            self._lanes[subject] = _Lane(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
                name,
                f"{inbox}.{index}",
                seen.get(subject, 0),
            )
        self._by_name = {lane.name: lane for lane in self._lanes.values()}
        self._by_reply = {lane.reply: lane for lane in self._lanes.values()}

    async def stop(self) -> None:
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            with contextlib.suppress(Exception):
                await inbox.unsubscribe()
        self._lanes = {}
        self._by_name = {}
        self._by_reply = {}

    async def pull(self, nc: Client, count: int, block_ms: int | None) -> list[tuple[str, Arrived]]:
        """Up to ``count`` entries, oldest first over all consumers: without waiting for
        new ones (``block_ms`` None: each request answers at once), or waiting up to
        ``block_ms`` for some. ``ConsumerGone`` when a consumer no longer answers."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if block_ms is None:
            request = orjson.dumps({"batch": count, "no_wait": True})
            lifetime = HISTORY_WAIT_S
        else:
            request = orjson.dumps({"batch": count, "expires": block_ms * 1_000_000})
            lifetime = block_ms / 1000 + 2.0
        lanes = list(self._lanes.values())
        for lane in lanes:
            if lane.live and now > lane.deadline:
                lane.live = False  # its answer was lost
            if not lane.live and len(lane.buffer) < count:
                lane.live = True
                lane.expected = count
                lane.deadline = now + lifetime
                await nc.publish(lane.api, request, reply=lane.reply)
        arrived = self._arrived
        if block_ms is None:
            # History: every request answers at once (entries, then the end of them).
            deadline = now + HISTORY_WAIT_S
            while any(lane.live for lane in lanes) and loop.time() < deadline:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), deadline - loop.time())
        else:
            deadline = now + block_ms / 1000
            while not any(lane.buffer for lane in lanes) and any(lane.live for lane in lanes):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)
        if any(lane.gone for lane in lanes):
            raise ConsumerGone("a consumer of this positioning was deleted")
        return self._take(count)

    def _take(self, count: int) -> list[tuple[str, Arrived]]:
        """The ``count`` oldest buffered entries over all lanes, in stream order."""
        full = [(subject, lane) for subject, lane in self._lanes.items() if lane.buffer]
        if not full:
            return []
        if len(full) == 1:
            subject, lane = full[0]
            buffer = lane.buffer
            return [(subject, buffer.popleft()) for _ in range(min(count, len(buffer)))]
        merged = sorted(
            ((subject, item) for subject, lane in full for item in lane.buffer),
            key=lambda pair: pair[1].seq,
        )[:count]
        for subject, _ in merged:
            self._lanes[subject].buffer.popleft()
        return merged

    async def _on_message(self, msg: Msg) -> None:
        reply = msg.reply
        if reply and reply.startswith(_ACK_PREFIX):
            parts = reply.split(".")
            # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with a
            # domain and account hash after "ACK" (newer servers): 12 tokens or more.
            at = 2 if len(parts) == 9 else 4
            lane = self._by_name.get(parts[at + 1])
            if lane is None:
                return  # an earlier positioning's consumer
            lane.expected -= 1
            if lane.expected <= 0:
                lane.live = False
            seq = int(parts[at + 3])
            if seq <= lane.seen:
                return  # redelivered by the server while in hand, or already handled
            lane.seen = seq
            headers = msg.headers
            lane.buffer.append(
                Arrived(
                    seq,
                    int(parts[at + 5]) // 1_000_000,
                    int(parts[at + 2]),
                    msg.data,
                    reply,
                    headers.get(MSG_ID, "") if headers else "",
                )
            )
            self._arrived.set()
            return
        lane = self._by_reply.get(msg.subject)
        if lane is None:
            return
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == "100":
            return  # an idle heartbeat
        lane.live = False
        # 503: no consumer answers this name any more; 409 "Consumer Deleted": deleted while
        # the request waited. Either way this positioning is over (a successor took over,
        # or an operator deleted it): position again, which a stale owner cannot.
        if status == "503" or (
            status == "409" and "deleted" in " ".join(map(str, headers.values())).lower()
        ):
            lane.gone = True
        self._arrived.set()
