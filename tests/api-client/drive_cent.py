"""Drives a roomcast node's HTTP API with Centrifugo's own Python client,
`cent` (tests/tests/api_clients.rs runs it from the virtualenv that
tests/sdk/install.sh api makes).

Usage: drive_cent.py API_URL API_KEY HISTORY_ROOM PLAIN_ROOM PRESENCE_ROOM

Publishes into HISTORY_ROOM, broadcasts into it and PLAIN_ROOM, reads the
history back, reads PRESENCE_ROOM's presence and stats, the node list and
the channel list, and checks that an unknown namespace is cent's
CentApiResponseError 102. Every answer is parsed by cent's own models, so
a shape cent does not accept fails here. Prints one JSON object with what
it saw; exits non-zero on the first thing that is not as it should be.
"""

import json
import sys

from cent import (
    BroadcastRequest,
    ChannelsRequest,
    Client,
    HistoryRequest,
    InfoRequest,
    PresenceRequest,
    PresenceStatsRequest,
    PublishRequest,
)
from cent.exceptions import CentApiResponseError, CentUnauthorizedError


def check(cond, what):
    if not cond:
        print(f"drive_cent: {what}", file=sys.stderr)
        sys.exit(1)


def main():
    url, key, hist, plain, pres = sys.argv[1:6]
    client = Client(url, key, timeout=10)
    seen = {}

    r = client.publish(PublishRequest(channel=hist, data={"n": 1}))
    check(r.offset == 1 and r.epoch, f"publish into a history room: {r!r}")
    seen["publish"] = {"offset": r.offset, "epoch": r.epoch}

    b = client.broadcast(BroadcastRequest(channels=[hist, plain], data={"n": 2}))
    check(len(b.responses) == 2, f"broadcast: {b!r}")
    check(all(x.error is None for x in b.responses), f"broadcast errors: {b!r}")
    check(b.responses[0].result.offset == 2, f"broadcast offset: {b!r}")
    seen["broadcast"] = len(b.responses)

    h = client.history(HistoryRequest(channel=hist, limit=10))
    data = [p.data for p in h.publications]
    check(data == [{"n": 1}, {"n": 2}], f"history: {h!r}")
    check(h.offset == 2 and h.epoch == r.epoch, f"history position: {h!r}")
    seen["history"] = data

    p = client.presence(PresenceRequest(channel=pres))
    seen["presence"] = {c: i.user for c, i in p.presence.items()}
    for c, i in p.presence.items():
        check(i.client == c, f"presence entry {c}: {i!r}")
    s = client.presence_stats(PresenceStatsRequest(channel=pres))
    check(s.num_clients == len(p.presence), f"presence stats: {s!r} vs {p!r}")
    seen["presence_stats"] = {"num_clients": s.num_clients, "num_users": s.num_users}

    info = client.info(InfoRequest())
    check(len(info.nodes) >= 1, f"info: {info!r}")
    seen["nodes"] = sorted(n.uid for n in info.nodes)
    seen["clients"] = sum(n.num_clients for n in info.nodes)

    ch = client.channels(ChannelsRequest(pattern=pres))
    seen["channels"] = {c: i.num_clients for c, i in ch.channels.items()}

    try:
        client.publish(PublishRequest(channel="nope:1", data=1))
        check(False, "a publish into an unknown namespace succeeded")
    except CentApiResponseError as e:
        check(e.code == 102, f"unknown namespace: code {e.code}")
        seen["unknown_channel"] = e.code

    try:
        Client(url, "wrong-key", timeout=10).info(InfoRequest())
        check(False, "a wrong key was accepted")
    except CentUnauthorizedError:
        seen["wrong_key"] = "unauthorized"

    print(json.dumps(seen, sort_keys=True))


if __name__ == "__main__":
    main()
