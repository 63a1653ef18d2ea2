"""roomcast's SDK agent for centrifuge-python (asyncio, websockets).

A long-lived process that end-to-end tests drive: one JSON command per line
on stdin, one JSON object per line on stdout (replies and events); logs go to
stderr. The protocol (commands, replies, events and their fields) is the one
documented at the top of ../js/agent.mjs; tests/src/sdk.rs is its driver.
Run it with the interpreter of the virtualenv that tests/sdk/install.sh makes.

Where this agent differs from the JS one, because the Python SDK does:
- `error` events carry `type: null` (the SDK reports a numeric code only; the
  codes are the JS SDK's: 1 timeout, 2 transport closed, 5 connect token, ...)
  and `message` is the text of the SDK's exception. The same holds for
  `subscriptionError`.
- `connected` carries `transport: "websocket"` and the server's `version`.
- The SDK has no `since` subscription option: the agent sets the position the
  SDK recovers from itself (the private `_recover`, `_offset`, `_epoch` of the
  subscription), which is what the JS SDK's `since` does.
- `dropTransport` aborts the TCP connection under the SDK's websockets
  connection (the private `Client._conn`), without a close frame.
- Errors of the SDK without a server code are mapped onto the JS SDK's codes:
  OperationTimeoutError -> 1, ClientDisconnectedError -> 3,
  SubscriptionUnsubscribedError -> 7; other exceptions are "sdk_error".
- `message` events (async message pushes) are not reported: the SDK has no
  handler for them. `rpc` works; there is no `send`.
- A getToken list entry {"unauthorized": true} raises the SDK's
  UnauthorizedError, {"error": "msg"} a plain exception, as in the JS agent.
"""

import asyncio
import json
import logging
import os
import sys
import threading
from importlib import metadata

from centrifuge import (
    Client,
    ClientDisconnectedError,
    ClientEventHandler,
    OperationTimeoutError,
    ReplyError,
    StreamPosition,
    SubscriptionEventHandler,
    SubscriptionUnsubscribedError,
    UnauthorizedError,
)

logging.basicConfig(
    stream=sys.stderr,
    level=logging.DEBUG if os.environ.get("ROOMCAST_SDK_DEBUG") else logging.WARNING,
    format="[%(levelname)s] %(name)s: %(message)s",
)
log = logging.getLogger("agent")


def out(obj):
    # Only the event loop's thread writes stdout.
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def emit(name, **fields):
    out({"event": name, **fields})


class AgentError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def to_error(e):
    if isinstance(e, AgentError):
        return {"code": e.code, "message": e.message}
    if isinstance(e, ReplyError):
        return {"code": e.code, "message": e.message, "temporary": bool(e.temporary)}
    if isinstance(e, OperationTimeoutError):
        return {"code": 1, "message": str(e) or "timeout"}
    if isinstance(e, ClientDisconnectedError):
        return {"code": 3, "message": str(e) or "client disconnected"}
    if isinstance(e, SubscriptionUnsubscribedError):
        return {"code": 7, "message": str(e) or "subscription unsubscribed"}
    return {"code": "sdk_error", "message": f"{type(e).__name__}: {e}"}


def need(cmd, field, typ=None):
    v = cmd.get(field)
    if v is None or (typ is not None and not isinstance(v, typ)):
        kind = f" ({typ.__name__})" if typ is not None else ""
        raise AgentError("bad_command", f'"{cmd.get("cmd")}" needs "{field}"{kind}')
    return v


def opt_list(cmd, field):
    v = cmd.get(field)
    if v is not None and not isinstance(v, list):
        raise AgentError("bad_command", f'"{field}" must be a list')
    return v


def opt_since(cmd):
    since = cmd.get("since")
    if since is None:
        return None
    if not isinstance(since, dict):
        raise AgentError("bad_command", '"since" must be {offset,epoch}')
    return StreamPosition(offset=int(since.get("offset") or 0), epoch=str(since.get("epoch") or ""))


def info(i):
    if i is None:
        return None
    return {
        "client": i.client or "",
        "user": i.user or "",
        "connInfo": i.conn_info,
        "chanInfo": i.chan_info,
    }


def pub(channel, p):
    return {
        "channel": channel,
        "data": p.data,
        "info": info(p.info),
        "offset": p.offset or None,
        "tags": p.tags or None,
    }


def position(sp):
    if sp is None:
        return None
    return {"offset": sp.offset, "epoch": sp.epoch}


def subscribed_fields(server, ctx):
    return {
        "server": server,
        "channel": ctx.channel,
        "recovered": bool(ctx.recovered),
        "wasRecovering": bool(ctx.was_recovering),
        "positioned": bool(ctx.positioned),
        "recoverable": bool(ctx.recoverable),
        "streamPosition": position(ctx.stream_position),
        "data": ctx.data,
    }


def guarded(f):
    """An exception escaping an SDK event handler stops the client: report it
    instead (to stderr) and go on."""

    async def call(*args, **kwargs):
        try:
            await f(*args, **kwargs)
        except Exception:
            log.exception("agent event handler failed")

    return call


class Tokens:
    """A getToken list: each call of the SDK's callback hands out the next entry."""

    def __init__(self, scope, channel, entries):
        self.scope = scope
        self.channel = channel
        self.entries = list(entries)
        self.next = 0

    async def get(self, *_args):
        index = self.next
        self.next += 1
        if index >= len(self.entries):
            emit("getToken", scope=self.scope, channel=self.channel, index=index, token=None, exhausted=True)
            raise RuntimeError("agent: getToken list exhausted")
        entry = self.entries[index]
        emit(
            "getToken",
            scope=self.scope,
            channel=self.channel,
            index=index,
            token=entry if isinstance(entry, str) else None,
        )
        if isinstance(entry, dict):
            if entry.get("unauthorized"):
                raise UnauthorizedError("unauthorized")
            raise RuntimeError(str(entry.get("error") or "agent: getToken error"))
        return "" if entry is None else str(entry)


class ClientEvents(ClientEventHandler):
    @guarded
    async def on_connecting(self, ctx):
        emit("connecting", code=ctx.code, reason=ctx.reason)

    @guarded
    async def on_connected(self, ctx):
        emit("connected", client=ctx.client, transport="websocket", version=ctx.version, data=ctx.data)

    @guarded
    async def on_disconnected(self, ctx):
        emit("disconnected", code=ctx.code, reason=ctx.reason)

    @guarded
    async def on_error(self, ctx):
        emit("error", type=None, code=ctx.code, message=f"{type(ctx.error).__name__}: {ctx.error}")

    @guarded
    async def on_subscribing(self, ctx):
        emit("subscribing", server=True, channel=ctx.channel, code=None, reason=None)

    @guarded
    async def on_subscribed(self, ctx):
        emit("subscribed", **subscribed_fields(True, ctx))

    @guarded
    async def on_unsubscribed(self, ctx):
        emit("unsubscribed", server=True, channel=ctx.channel, code=None, reason=None)

    @guarded
    async def on_publication(self, ctx):
        emit("publication", server=True, **pub(ctx.channel, ctx.pub))

    @guarded
    async def on_join(self, ctx):
        emit("join", server=True, channel=ctx.channel, info=info(ctx.info))

    @guarded
    async def on_leave(self, ctx):
        emit("leave", server=True, channel=ctx.channel, info=info(ctx.info))


class SubEvents(SubscriptionEventHandler):
    def __init__(self, channel):
        self.channel = channel

    @guarded
    async def on_subscribing(self, ctx):
        emit("subscribing", server=False, channel=self.channel, code=ctx.code, reason=ctx.reason)

    @guarded
    async def on_subscribed(self, ctx):
        emit("subscribed", **subscribed_fields(False, ctx))

    @guarded
    async def on_unsubscribed(self, ctx):
        emit("unsubscribed", server=False, channel=self.channel, code=ctx.code, reason=ctx.reason)

    @guarded
    async def on_publication(self, ctx):
        emit("publication", server=False, **pub(self.channel, ctx.pub))

    @guarded
    async def on_join(self, ctx):
        emit("join", server=False, channel=self.channel, info=info(ctx.info))

    @guarded
    async def on_leave(self, ctx):
        emit("leave", server=False, channel=self.channel, info=info(ctx.info))

    @guarded
    async def on_error(self, ctx):
        emit(
            "subscriptionError",
            channel=self.channel,
            type=None,
            code=ctx.code,
            message=f"{type(ctx.error).__name__}: {ctx.error}",
        )


def ms(cmd, field, default):
    v = cmd.get(field)
    if v is None:
        return default
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise AgentError("bad_command", f'"{field}" must be a number of milliseconds')
    return v


def wait_s(cmd):
    t = cmd.get("timeout")
    return t / 1000.0 if isinstance(t, (int, float)) else 5.0


def via(cmd):
    v = cmd.get("via", "client")
    if v not in ("client", "subscription"):
        raise AgentError("bad_command", '"via" must be "client" or "subscription"')
    return v


class Agent:
    def __init__(self):
        self.client = None
        self.tokens = {}  # None -> the connection's list, channel -> a subscription's
        self.tasks = set()

    def spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task):
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task failed", exc_info=task.exception())

    def need_client(self):
        if self.client is None:
            raise AgentError("no_client", 'no client: send "connect" first')
        return self.client

    def need_sub(self, channel):
        sub = self.need_client().get_subscription(channel)
        if sub is None:
            raise AgentError("no_subscription", f'no subscription to "{channel}"')
        return sub

    async def cmd_connect(self, c):
        if self.client is not None:
            raise AgentError("already_connected", 'the agent has a client: use "connectAgain"')
        url = need(c, "url", str)
        kwargs = {
            "events": ClientEvents(),
            "min_reconnect_delay": ms(c, "minReconnectDelay", 100) / 1000.0,
            "max_reconnect_delay": ms(c, "maxReconnectDelay", 2000) / 1000.0,
            "timeout": ms(c, "timeout", 5000) / 1000.0,
            # Straight to the address, whatever the environment says of proxies.
            "proxy": None,
        }
        if c.get("token") is not None:
            kwargs["token"] = str(c["token"])
        entries = opt_list(c, "getToken")
        if entries is not None:
            tokens = Tokens("connection", None, entries)
            self.tokens[None] = tokens
            kwargs["get_token"] = tokens.get
        if c.get("name") is not None:
            kwargs["name"] = str(c["name"])
        if c.get("data") is not None:
            kwargs["data"] = c["data"]
        if c.get("headers") is not None:
            kwargs["headers"] = c["headers"]
        self.client = Client(url, **kwargs)
        return await self._connect(c)

    async def _connect(self, c):
        client = self.client
        # connect() returns once the first attempt is over: the reply does not
        # wait for it (as in the JS agent) unless asked to.
        self.spawn(client.connect())
        await asyncio.sleep(0)
        if c.get("wait"):
            await client.ready(timeout=wait_s(c))
        return {"state": client.state.value}

    async def cmd_connectAgain(self, c):
        self.need_client()
        return await self._connect(c)

    async def cmd_disconnect(self, _c):
        client = self.need_client()
        await client.disconnect()
        return {"state": client.state.value}

    async def cmd_dropTransport(self, _c):
        client = self.need_client()
        conn = getattr(client, "_conn", None)
        transport = getattr(conn, "transport", None)
        if conn is None or transport is None or transport.is_closing():
            raise AgentError("no_transport", "no open WebSocket to drop")
        transport.abort()
        return {}

    async def cmd_subscribe(self, c):
        client = self.need_client()
        channel = need(c, "channel", str)
        sub = client.get_subscription(channel)
        if sub is None:
            kwargs = {
                "events": SubEvents(channel),
                "min_resubscribe_delay": ms(c, "minResubscribeDelay", 100) / 1000.0,
                "max_resubscribe_delay": ms(c, "maxResubscribeDelay", 2000) / 1000.0,
                "join_leave": bool(c.get("joinLeave")),
                "recoverable": bool(c.get("recoverable")),
                "positioned": bool(c.get("positioned")),
            }
            if c.get("token") is not None:
                kwargs["token"] = str(c["token"])
            entries = opt_list(c, "getToken")
            if entries is not None:
                tokens = Tokens("subscription", channel, entries)
                self.tokens[channel] = tokens
                kwargs["get_token"] = tokens.get
            if c.get("data") is not None:
                kwargs["data"] = c["data"]
            since = opt_since(c)
            sub = client.new_subscription(channel, **kwargs)
            if since is not None:
                # What centrifuge-js's `since` does: recover from this position on
                # the first subscribe.
                sub._recover = True
                sub._offset = since.offset
                sub._epoch = since.epoch
        await sub.subscribe()
        if c.get("wait"):
            await sub.ready(timeout=wait_s(c))
        return {"state": sub.state.value}

    async def cmd_unsubscribe(self, c):
        channel = need(c, "channel", str)
        sub = self.need_sub(channel)
        await sub.unsubscribe()
        if c.get("remove"):
            self.client.remove_subscription(sub)
            self.tokens.pop(channel, None)
        return {"state": sub.state.value}

    async def cmd_publish(self, c):
        channel = need(c, "channel", str)
        if "data" not in c:
            raise AgentError("bad_command", '"publish" needs "data"')
        if via(c) == "subscription":
            await self.need_sub(channel).publish(c["data"])
        else:
            await self.need_client().publish(channel, c["data"])
        return {}

    async def cmd_presence(self, c):
        channel = need(c, "channel", str)
        if via(c) == "subscription":
            r = await self.need_sub(channel).presence()
        else:
            r = await self.need_client().presence(channel)
        return {"clients": {k: info(v) for k, v in r.clients.items()}}

    async def cmd_presenceStats(self, c):
        channel = need(c, "channel", str)
        if via(c) == "subscription":
            r = await self.need_sub(channel).presence_stats()
        else:
            r = await self.need_client().presence_stats(channel)
        return {"numClients": r.num_clients, "numUsers": r.num_users}

    async def cmd_history(self, c):
        channel = need(c, "channel", str)
        kwargs = {
            "limit": int(c.get("limit") or 0),
            "since": opt_since(c),
            "reverse": bool(c.get("reverse")),
        }
        if via(c) == "subscription":
            r = await self.need_sub(channel).history(**kwargs)
        else:
            r = await self.need_client().history(channel, **kwargs)
        return {
            "publications": [pub(channel, p) for p in r.publications],
            "offset": r.offset,
            "epoch": r.epoch,
        }

    async def cmd_rpc(self, c):
        method = need(c, "method", str)
        r = await self.need_client().rpc(method, c.get("data"))
        return {"data": r.data}

    async def cmd_addTokens(self, c):
        tokens = opt_list(c, "tokens")
        if tokens is None:
            raise AgentError("bad_command", '"addTokens" needs "tokens"')
        key = c.get("channel")
        source = self.tokens.get(key)
        if source is None:
            what = "the connection" if key is None else f'"{key}"'
            raise AgentError("bad_command", f"no getToken list for {what}")
        source.entries.extend(tokens)
        return {"total": len(source.entries)}

    async def cmd_state(self, _c):
        if self.client is None:
            return {"client": None, "subscriptions": {}}
        subs = {ch: s.state.value for ch, s in self.client.subscriptions().items()}
        return {"client": self.client.state.value, "subscriptions": subs}

    async def cmd_exit(self, _c):
        return {}

    async def handle(self, line):
        try:
            cmd = json.loads(line)
        except ValueError as e:
            out({"ok": False, "reqId": None, "error": {"code": "bad_json", "message": f"not JSON: {e}"}})
            return
        req_id = cmd.get("reqId") if isinstance(cmd, dict) else None
        try:
            if not isinstance(cmd, dict) or not isinstance(cmd.get("cmd"), str):
                raise AgentError("bad_command", 'a command is an object with a string "cmd"')
            f = getattr(self, "cmd_" + cmd["cmd"], None)
            if f is None:
                raise AgentError("bad_command", f'unknown command "{cmd["cmd"]}"')
            result = await f(cmd)
            out({"ok": True, "reqId": req_id, "result": result})
            if cmd["cmd"] == "exit":
                sys.stdout.flush()
                os._exit(0)
        except Exception as e:  # every failure is a reply, never a crash
            out({"ok": False, "reqId": req_id, "error": to_error(e)})


async def main():
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()

    def read_stdin():
        for raw in sys.stdin.buffer:
            line = raw.decode("utf-8", errors="replace")
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    agent = Agent()
    emit(
        "ready",
        sdk="py",
        version=metadata.version("centrifuge-python"),
        python=sys.version.split()[0],
    )
    while True:
        line = await lines.get()
        if line is None:
            break
        if line.strip():
            agent.spawn(agent.handle(line))
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
