"""Takes commands off the broker and answers each one. Messages arrive on paho's network
thread and are queued; the `commands` thread checks each (size, strict JSON: UTF-8,
nesting depth, finite numbers; schema, age, signature, repeat) and runs its handler, so
one slow command never stalls the network loop. Commands that take long (a model update)
run on a thread of their own and reply when done. Every command gets exactly one reply,
also a malformed one."""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from edge_agent.commands.handlers import HANDLERS, CommandContext, CommandError
from edge_agent.commands.journal import CommandJournal
from edge_agent.commands.schemas import REQUEST_ID_PATTERN, Command, Reply
from edge_agent.config.settings import CommandsSettings
from edge_agent.errors import UserError, validation_lines
from edge_agent.json_body import BodyError, canonical, parse_object
from edge_agent.link import topics
from edge_agent.link.mqtt import Message, MqttLink, PublishError
from edge_agent.payloads import Envelope
from edge_agent.updates.signing import public_key_from_setting, verify_bytes

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
_QUEUE_SIZE = 1000  # commands waiting; past this the broker's burst is refused, not buffered


class CommandDispatcher:
    def __init__(
        self,
        settings: CommandsSettings,
        trusted_keys: Callable[[], dict[str, str]],
        link: MqttLink,
        envelope: Envelope,
        journal: CommandJournal,
        context: CommandContext,
        groups: list[str],
    ) -> None:
        self.settings = settings
        self.trusted_keys = trusted_keys  # read at each command: [updates] applies live
        self.link = link
        self.envelope = envelope
        self.journal = journal
        self.context = context
        self.prefix = link.settings.topic_prefix
        self.filters = topics.command_filters(self.prefix, link.device, groups)
        self.handled = 0
        self._queue: queue.Queue[tuple[topics.Command, Message] | None] = queue.Queue(_QUEUE_SIZE)
        self._running: set[str] = set()  # request ids of long commands not yet answered
        self._lock = threading.Lock()
        self._stopped = False
        self._crashed = False  # a long command's thread ended by an escaping exception
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)

    def start(self) -> None:
        """Takes commands from here on: subscribed now, and on every connect."""
        for topic_filter in self.filters:
            self.link.subscribe(topic_filter, self.on_message)
        self._thread.start()

    @property
    def dead(self) -> bool:
        """The `commands` thread, or a long command's, ended without being asked to."""
        ended = self._thread.ident is not None and not self._thread.is_alive()
        return self._crashed or (ended and not self._stopped)

    def stop(self, timeout: float = 2.0) -> None:
        self._stopped = True
        self._queue.put(None)
        self._thread.join(timeout)

    def on_message(self, message: Message) -> None:
        """paho's network thread: queue it and return."""
        if not isinstance(message.topic, topics.Command):
            return
        try:
            self._queue.put_nowait((message.topic, message))
        except queue.Full:
            log.warning("command queue full: %s dropped", message.topic.topic)

    # The commands thread -----------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            topic, message = item
            try:
                self._handle(topic.command, message)
            except Exception:  # a bug in one handler must not end the thread
                log.exception("command on %s failed", topic.topic)
            self.handled += 1

    def _handle(self, name: str, message: Message) -> None:
        props = message.properties
        request_id: str | None = None
        try:
            body = self._parse(message.payload)
            raw_id = body.get("request_id")
            if isinstance(raw_id, str) and _valid_id(raw_id):
                request_id = raw_id
            else:
                raise CommandError(f"request_id: missing or not matching {REQUEST_ID_PATTERN}")
            first = self.journal.reply_for(request_id)
            if first is not None:
                self._send(first, request_id, props)  # a repeat: the first reply, no action
                return
            with self._lock:
                if request_id in self._running:
                    self._reply(name, request_id, props, "ok", None, {"state": "in_progress"})
                    return
            handler = HANDLERS.get(name)
            if handler is None:
                raise CommandError(f"unknown command {name!r}; known: {', '.join(HANDLERS)}")
            try:
                command = handler.schema.model_validate(body)
            except ValidationError as exc:
                raise CommandError("; ".join(validation_lines(exc, name))) from exc
            self._check_time(command)
            self._check_signature(body, command)
        except (CommandError, UserError) as exc:
            self._reply(name, request_id, props, "error", str(exc), None, remember=False)
            return
        if handler.long_running:
            with self._lock:
                self._running.add(request_id)
            threading.Thread(
                target=self._execute,
                args=(name, command, props),
                name=f"command-{name}",
                daemon=True,
            ).start()
        else:
            self._execute(name, command, props)

    def _execute(self, name: str, command: Command, props: Properties | None) -> None:
        try:
            result = HANDLERS[name].run(self.context, command)
        except (CommandError, UserError) as exc:
            self._reply(name, command.request_id, props, "error", str(exc), None)
        except Exception as exc:
            log.exception("command %s (%s) failed", name, command.request_id)
            self._reply(name, command.request_id, props, "error", f"internal error: {exc}", None)
        except BaseException:
            self._crashed = True  # not even a reply: the watchdog says so
            raise
        else:
            self._reply(name, command.request_id, props, "ok", None, result)
        finally:
            with self._lock:
                self._running.discard(command.request_id)

    def _parse(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self.settings.max_bytes:
            raise CommandError(
                f"body of {len(payload)} bytes is over commands.max_bytes "
                f"({self.settings.max_bytes})"
            )
        try:
            return parse_object(payload)
        except BodyError as exc:
            raise CommandError(str(exc)) from exc

    def _check_time(self, command: Command) -> None:
        now = time.time()
        if command.expires_at is not None and command.expires_at < now:
            raise CommandError(f"expired {now - command.expires_at:.0f} s ago")
        if command.issued_at is not None and now - command.issued_at > self.settings.max_age_s:
            raise CommandError(
                f"issued {now - command.issued_at:.0f} s ago, older than "
                f"commands.max_age_s ({self.settings.max_age_s:.0f} s)"
            )

    def _check_signature(self, body: dict[str, Any], command: Command) -> None:
        signature = command.signature
        if signature is None:
            if self.settings.require_signed:
                raise CommandError("unsigned command refused (commands.require_signed is true)")
            return
        setting = self.trusted_keys().get(signature.key_id)
        if setting is None:
            raise CommandError(f"signed by unknown key {signature.key_id!r}")
        if command.issued_at is None or command.nonce is None:
            raise CommandError("a signed command needs issued_at and nonce")
        unsigned = {k: v for k, v in body.items() if k != "signature"}
        key = public_key_from_setting(setting)
        if not verify_bytes(canonical(unsigned), signature.value, key):
            raise CommandError("bad signature")
        if not self.journal.first_use(command.nonce, self.settings.max_age_s):
            raise CommandError(f"nonce {command.nonce!r} already used: replay refused")

    # Replies -----------------------------------------------------------------------------

    def _reply(
        self,
        name: str,
        request_id: str | None,
        props: Properties | None,
        status: Literal["ok", "error"],
        reason: str | None,
        result: Any,
        *,
        remember: bool = True,
    ) -> None:
        reply = Reply(
            id=self.envelope.new_id(),
            ts=time.time(),
            device=self.envelope.device,
            request_id=request_id,
            command=name,
            status=status,
            reason=reason,
            result=result,
        )
        body = reply.model_dump_json(by_alias=True).encode()
        if status == "error":
            log.warning("command %s (%s) refused: %s", name, request_id, reason)
        # Refusals before the command was understood are not remembered: the same id may
        # come again, corrected.
        if remember and request_id is not None:
            self.journal.record(request_id, body)
        self._send(body, request_id, props)

    def _send(self, body: bytes, request_id: str | None, props: Properties | None) -> None:
        topic = getattr(props, "ResponseTopic", None) if props is not None else None
        out_props = None
        if topic:
            correlation = getattr(props, "CorrelationData", None)
            if correlation is not None:
                out_props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                out_props.CorrelationData = correlation
        else:
            topic = topics.Reply(self.prefix, self.link.device, request_id or "invalid").topic
        if self.link.protocol != "5":
            out_props = None  # MQTT 3.1.1 (set, or fallen back to): the reply topic alone
        try:
            self.link.publish(topic, body, qos=1, properties=out_props)
        except PublishError as exc:
            log.warning("reply not sent (%s); a repeat of the request gets it", exc)


def _valid_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None
