"""Pub/Sub notifications from Cloud Storage: hints that something changed at the source.

Two modes:
- ``--subscription``: a shared subscription (one replica hears each message; the poll
  interval is the safety net for the others).
- ``--topic``: this replica creates its own subscription on the topic, named from
  ``POD_NAME`` (or the host name), filtered on the bucket and prefix where the server
  supports filters, with an expiration policy so a dead pod's subscription goes away;
  it is deleted on clean shutdown. Every replica hears of every version.

Messages are handed to the poller as ``Hint``s; the poller acks them once handled.
``on_failure`` wakes the poller at once when notifications go down, so it need not wait
for its next poll: when the stream ends for good (the subscription was deleted, or a
restarted emulator lost it; ``failed``: recreate it and list), and when the connection to
Pub/Sub is lost (``connected`` is False while the client reconnects on its own; list
meanwhile, since nothing arrives until it is back).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_poller.backoff import Backoff
from model_poller.errors import NotificationError, PollerError
from model_poller.logs import RareLog
from model_poller.text import one_line
from model_poller.versions import parse_version

log = logging.getLogger(__name__)

# Resubscribing is retried after 1, 2, 4... seconds, up to the fallback poll interval: once
# an administrator recreates a topic, notifications are back within that long.
RESUBSCRIBE_START = 1.0
# A notification failure that repeats unchanged is logged at most this often.
NOTIFY_LOG_EVERY = 600.0

SUBSCRIPTION_TTL_SECONDS = 24 * 3600  # the minimum Pub/Sub allows
ACK_DEADLINE_SECONDS = 60
RETENTION_SECONDS = 600
FINALIZE = "OBJECT_FINALIZE"
DELETE = "OBJECT_DELETE"
_INVALID = re.compile(r"[^a-z0-9-]+")


@dataclass
class Hint:
    """One notification: an object changed. ``ack``/``nack`` settle the message."""

    bucket: str
    name: str
    generation: int | None
    event: str
    published: float
    message: Any = None

    @property
    def key(self) -> tuple[str, str, int | None, str]:
        return (self.bucket, self.name, self.generation, self.event)

    def ack(self) -> None:
        if self.message is not None:
            self.message.ack()

    def nack(self) -> None:
        if self.message is not None:
            self.message.nack()


def subscription_name(project: str, pod: str, topic: str, source: str) -> str:
    """``projects/P/subscriptions/model-poller-<pod>-<hash>``: stable across restarts of
    one pod (a crashed pod's subscription is reused, then expires), distinct per pod."""
    slug = _INVALID.sub("-", pod.lower()).strip("-")[:180] or "poller"
    digest = hashlib.sha256(f"{topic}\n{source}".encode()).hexdigest()[:8]
    return f"projects/{project}/subscriptions/model-poller-{slug}-{digest}"


def subscription_filter(bucket: str, prefix: str) -> str:
    expr = f'attributes.bucketId = "{bucket}"'
    if prefix:
        expr += f' AND hasPrefix(attributes.objectId, "{prefix}")'
    return expr


def hint_from_message(message: Any) -> Hint | None:
    """A Hint from a Cloud Storage notification, or None for any other message."""
    attrs = dict(message.attributes or {})
    bucket = attrs.get("bucketId")
    name = attrs.get("objectId")
    if not bucket or not name:
        return None
    # Like a version number: ASCII digits within int64 (int() would take " 12" or "١٢").
    generation = parse_version(str(attrs.get("objectGeneration", "")))
    published = time.time()
    publish_time = getattr(message, "publish_time", None)
    if publish_time is not None:
        try:
            published = float(publish_time.timestamp())
        except (AttributeError, ValueError, OSError):
            pass
    return Hint(
        bucket=bucket,
        name=name,
        generation=generation,
        event=attrs.get("eventType", ""),
        published=published,
        message=message,
    )


class Notifications:
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        on_hint: Callable[[Hint], None],
        subscription: str | None = None,
        topic: str | None = None,
        pod: str = "poller",
        source_uri: str = "",
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        if (subscription is None) == (topic is None):
            raise ValueError("exactly one of subscription or topic")
        self.bucket = bucket
        self.prefix = prefix
        self.topic = topic
        self.own = topic is not None
        if topic is not None:
            project = topic.split("/")[1]
            self.subscription = subscription_name(project, pod, topic, source_uri)
        else:
            assert subscription is not None
            self.subscription = subscription
        self._on_hint = on_hint
        self._on_failure = on_failure or (lambda: None)
        self._client: Any = None
        self._future: Any = None
        self._failed = threading.Event()
        self._connected = threading.Event()
        self._channel: Any = None

    @property
    def failed(self) -> bool:
        """True when the streaming pull died; ``start()`` again (with backoff)."""
        return self._failed.is_set()

    @property
    def connected(self) -> bool:
        """False while the gRPC channel to Pub/Sub is not READY (connecting, or failing)."""
        return self._connected.is_set()

    def start(self) -> None:
        """Create (topic mode) or check (shared mode) the subscription, start pulling.

        Raises ``NotificationError`` with one line (missing topic, denied, unreachable).
        """
        from google.api_core import exceptions as api
        from google.cloud import pubsub_v1

        self._failed.clear()
        if self._client is None:
            try:
                self._client = pubsub_v1.SubscriberClient()
            except Exception as exc:  # noqa: BLE001 - credential trouble becomes one line
                raise NotificationError(f"cannot create a Pub/Sub client: {one_line(exc, 240)}") from None
        try:
            if self.own:
                self._create_own()
            else:
                self._client.get_subscription(request={"subscription": self.subscription}, timeout=30)
        except api.NotFound:
            what = f"topic {self.topic}" if self.own else f"subscription {self.subscription}"
            raise NotificationError(f"{what} does not exist") from None
        except (api.PermissionDenied, api.Unauthenticated) as exc:
            raise NotificationError(f"Pub/Sub access denied for {self.subscription}: {_message(exc)}") from None
        except api.GoogleAPICallError as exc:
            raise NotificationError(f"Pub/Sub error for {self.subscription}: {_message(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - auth/transport errors, one line
            raise NotificationError(f"Pub/Sub unreachable for {self.subscription}: {one_line(exc, 240)}") from None

        self._follow_channel()
        flow = pubsub_v1.types.FlowControl(max_messages=1000, max_lease_duration=3600)
        self._future = self._client.subscribe(self.subscription, callback=self._receive, flow_control=flow)
        self._future.add_done_callback(self._done)
        log.info("listening for notifications on %s", self.subscription)

    def _follow_channel(self) -> None:
        """Follow the connectivity of the client's gRPC channel (the streaming pull's): it
        reconnects on its own, silently, for as long as Pub/Sub is away."""
        if self._channel is not None:
            return
        channel = getattr(getattr(self._client, "transport", None), "grpc_channel", None)
        if channel is None:  # not a gRPC transport: no state to follow
            self._connected.set()
            return
        self._channel = channel
        channel.subscribe(self._on_channel_state, try_to_connect=True)

    def _on_channel_state(self, state: Any) -> None:
        import grpc

        ready = state == grpc.ChannelConnectivity.READY
        was = self._connected.is_set()
        if ready and not was:
            self._connected.set()
            log.info("connected to Pub/Sub (%s)", self.subscription)
        elif was and not ready:
            self._connected.clear()
            log.warning(
                "lost the connection to Pub/Sub (%s, %s); reconnecting",
                self.subscription,
                getattr(state, "name", state),
            )
            self._on_failure()

    def _create_own(self) -> None:
        from google.api_core import exceptions as api

        request: dict[str, Any] = {
            "name": self.subscription,
            "topic": self.topic,
            "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
            "expiration_policy": {"ttl": {"seconds": SUBSCRIPTION_TTL_SECONDS}},
            "message_retention_duration": {"seconds": RETENTION_SECONDS},
            "filter": subscription_filter(self.bucket, self.prefix),
        }
        try:
            self._client.create_subscription(request=request, timeout=30)
        except api.AlreadyExists:
            log.info("reusing subscription %s (left by an earlier run of this pod)", self.subscription)
            return
        except api.InvalidArgument as exc:
            log.info("subscription filters not supported here (%s); filtering in the poller", _message(exc))
            del request["filter"]
            try:
                self._client.create_subscription(request=request, timeout=30)
            except api.AlreadyExists:
                log.info("reusing subscription %s", self.subscription)
                return
        log.info("created subscription %s on %s", self.subscription, self.topic)

    def _receive(self, message: Any) -> None:
        try:
            hint = hint_from_message(message)
        except Exception:  # noqa: BLE001 - a malformed message is acked and dropped, never redelivered forever
            log.exception("ignoring a malformed notification (message id %s)", getattr(message, "message_id", "?"))
            message.ack()
            return
        if hint is None or hint.bucket != self.bucket or not hint.name.startswith(self.prefix):
            message.ack()  # not about our source
            return
        self._on_hint(hint)

    def _done(self, future: Any) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("notification stream for %s stopped: %s", self.subscription, _message(exc))
            self._failed.set()
            self._on_failure()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop pulling; in topic mode delete our own subscription. Takes at most about
        ``timeout`` seconds in all, even with Pub/Sub unreachable: the subscription
        expires on its own (SUBSCRIPTION_TTL_SECONDS) if it cannot be deleted now."""
        deadline = time.monotonic() + timeout
        if self._channel is not None:
            self._channel.unsubscribe(self._on_channel_state)  # stopping is no lost connection
            self._channel = None
        future, self._future = self._future, None
        if future is not None:
            future.cancel()  # the stream closes in the background, while the delete goes out
        if self._client is not None and self.own:
            try:
                # One attempt: the client's default retry keeps trying UNAVAILABLE for a
                # minute, whatever the timeout (a SIGTERM then took a minute to end).
                self._client.delete_subscription(
                    request={"subscription": self.subscription}, timeout=_left(deadline), retry=None
                )
                log.info("deleted subscription %s", self.subscription)
            except Exception as exc:  # noqa: BLE001 - it expires on its own anyway
                log.warning(
                    "could not delete subscription %s (it expires on its own within %d h): %s",
                    self.subscription,
                    SUBSCRIPTION_TTL_SECONDS // 3600,
                    _message(exc),
                )
        if future is not None:
            try:
                future.result(timeout=_left(deadline))
            except Exception:  # noqa: BLE001 - cancelled, already failed, or out of time
                pass
        if self._client is None:
            return
        try:
            self._client.close()
        except Exception:  # noqa: BLE001
            pass
        self._client = None


class Listener:
    """Keeps notifications flowing for the run loop: subscribes, notices when they are down
    (not subscribed, the stream ended, the connection to Pub/Sub lost), resubscribes with
    backoff, and says when a listing is due because of it: within the fallback interval
    when they go down, at once when the stream ends (what the lost subscription held is
    gone) and when they are back (to catch up on what happened meanwhile)."""

    def __init__(self, notifications: Notifications, fallback: float) -> None:
        self.notifications = notifications
        self._fallback = fallback
        self._listening = False
        self._subscribed_once = False
        self._was_down = False
        self._retry_at = 0.0
        self._backoff = Backoff(start=RESUBSCRIBE_START, cap=max(RESUBSCRIBE_START, fallback))
        self._log = RareLog(log, NOTIFY_LOG_EVERY)

    @property
    def down(self) -> bool:
        """Nothing would be heard: not listening, or not connected to Pub/Sub."""
        return self._stream_gone() or not self.notifications.connected

    def _stream_gone(self) -> bool:
        """Not listening, or the stream died: (re)subscribing is due."""
        return not self._listening or self.notifications.failed

    def tend(self, now: float) -> float | None:
        """Resubscribe when it is time; returns when a listing is due because of what
        happened to the notifications (None: nothing happened)."""
        due = None
        down = self.down
        if down and not self._was_down:
            due = now + self._fallback  # not a poll interval away
        self._was_down = down
        if not self._stream_gone():
            return due
        if self._listening:  # the stream just ended: list now, then every fallback interval
            self._listening = False
            due = now
        if now >= self._retry_at and self._subscribe(now):
            due = now
        return due

    def _subscribe(self, now: float) -> bool:
        """Start listening; True when notifications are back after an interruption."""
        try:
            self.notifications.start()
        except PollerError as exc:
            delay = self._backoff.fail()
            self._retry_at = now + delay
            self._log.error(f"{exc}", f" (retrying in {delay:.0f}s; listing every {self._fallback:g}s meanwhile)")
            return False
        self._listening = True
        self._backoff.reset()
        self._log.reset()
        back, self._subscribed_once = self._subscribed_once, True
        if back:
            log.info("notifications are back; listing once to catch up on what happened meanwhile")
        return back

    def wake_at(self) -> float:
        """When ``tend`` has something to do next (a resubscription); inf for nothing."""
        return self._retry_at if self._stream_gone() else float("inf")


def _left(deadline: float) -> float:
    """Seconds until ``deadline``; a small floor so a call still gets one quick try."""
    return max(0.1, deadline - time.monotonic())


def _message(exc: BaseException) -> str:
    return one_line(getattr(exc, "message", None) or exc, 240)
