// roomcast's SDK agent for the `centrifuge` JavaScript SDK (Node.js, `ws` as
// the WebSocket). A long-lived process that end-to-end tests drive: one JSON
// command per line on stdin, one JSON object per line on stdout (replies and
// events); everything else (logs, the SDK's console output) goes to stderr.
//
// The protocol is shared with ../py/agent.py; tests/src/sdk.rs is its driver.
//
// Replies:  {"ok":true,"reqId":R,"result":...}
//           {"ok":false,"reqId":R,"error":{"code":C,"message":"..."}}
//   C is a number for an error of the SDK or the server (1 timeout,
//   3 client disconnected, 7 subscription unsubscribed, 1xx from the server),
//   a string for an error of the agent: "bad_json", "bad_command",
//   "no_client", "already_connected", "no_subscription", "no_transport",
//   "sdk_error" (the SDK threw something without a code).
//   A line that is not JSON is answered with reqId null.
// Events:   {"event":NAME,...} with NAME one of
//   ready                 {sdk:"js",version} once at start
//   connecting            {code,reason}
//   connected             {client,transport,data}
//   disconnected          {code,reason}
//   error                 {type,code,message}         client-level error
//   message               {data}                      async message push
//   getToken              {scope:"connection"|"subscription",channel,index,token}
//                         (token null and exhausted:true past the list's end)
//   subscribing           {server,channel,code,reason} (code/reason null if server)
//   subscribed            {server,channel,recovered,wasRecovering,positioned,
//                          recoverable,streamPosition:{offset,epoch}|null,data}
//   unsubscribed          {server,channel,code,reason} (code/reason null if server)
//   publication           {server,channel,data,info,offset,tags}
//   join / leave          {server,channel,info}
//   subscriptionError     {channel,type,code,message}
//   server is true for a server-side subscription (events of the client),
//   false for one made with `subscribe`. info is {client,user,connInfo,
//   chanInfo} or null; an offset or tags the server did not send are null.
//
// Commands ({"cmd":NAME,"reqId":R,...}):
//   connect       {url, token?, getToken?:[tok...], name?, data?, headers?,
//                  minReconnectDelay? (ms, default 100), maxReconnectDelay?
//                  (ms, default 2000), timeout? (ms, default 5000), wait?}
//   connectAgain  {wait?}                  client.connect() again
//   disconnect    {}
//   dropTransport {}                       terminate() the open WebSocket: no
//                                          close frame; the SDK reconnects
//   subscribe     {channel, token?, getToken?:[...], joinLeave?, recoverable?,
//                  positioned?, since?:{offset,epoch}, data?,
//                  minResubscribeDelay? (ms, default 100),
//                  maxResubscribeDelay? (ms, default 2000), wait?}
//                 (a known channel is subscribed again, its options unchanged)
//   unsubscribe   {channel, remove?}
//   publish       {channel, data, via?:"client"|"subscription"}
//   presence      {channel, via?}          -> {clients:{id:info}}
//   presenceStats {channel, via?}          -> {numClients,numUsers}
//   history       {channel, limit?, since?, reverse?, via?}
//                                          -> {publications,offset,epoch}
//   rpc           {method, data}           -> {data}
//   addTokens     {channel?, tokens:[...]} extend a getToken list
//   state         {}                       -> {client, subscriptions:{ch:state}}
//   exit          {}                       replies, then exits 0
// A getToken list entry is a token string, {"error":"msg"} (the callback
// throws) or {"unauthorized":true} (it throws the SDK's UnauthorizedError).
// `wait` makes the reply wait for the connected/subscribed state (the
// command's timeout, or 5000 ms). End of stdin ends the process.

import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import util from 'node:util';

// stdout carries the protocol only.
for (const level of ['log', 'info', 'debug', 'warn', 'error', 'trace']) {
  console[level] = (...args) => process.stderr.write(`[${level}] ${util.format(...args)}\n`);
}

// The packages are installed apart from this file (target/sdk/js, see
// tests/sdk/install.sh): resolve them from there.
const here = path.dirname(fileURLToPath(import.meta.url));
const installDir = process.env.ROOMCAST_SDK_JS_DIR || here;
const require = createRequire(path.join(installDir, 'package.json'));
const { Centrifuge, UnauthorizedError } = require('centrifuge');
const WebSocket = require('ws');
const sdkVersion = JSON.parse(
  fs.readFileSync(path.join(path.dirname(require.resolve('centrifuge')), '..', 'package.json'), 'utf8'),
).version;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function emit(name, fields) {
  out({ event: name, ...fields });
}

class AgentError extends Error {
  constructor(code, message) {
    super(message);
    this.agentCode = code;
  }
}

function toError(e) {
  if (e instanceof AgentError) {
    return { code: e.agentCode, message: e.message };
  }
  if (e && typeof e === 'object' && typeof e.code === 'number') {
    const err = { code: e.code, message: String(e.message ?? '') };
    if (e.temporary !== undefined) err.temporary = !!e.temporary;
    return err;
  }
  return { code: 'sdk_error', message: String(e && e.message !== undefined ? e.message : e) };
}

function need(cmd, field, type) {
  const v = cmd[field];
  if (v === undefined || v === null || (type && typeof v !== type)) {
    throw new AgentError('bad_command', `"${cmd.cmd}" needs "${field}"${type ? ` (${type})` : ''}`);
  }
  return v;
}

function optList(cmd, field) {
  const v = cmd[field];
  if (v !== undefined && !Array.isArray(v)) {
    throw new AgentError('bad_command', `"${field}" must be a list`);
  }
  return v;
}

function info(i) {
  if (!i) return null;
  return { client: i.client ?? '', user: i.user ?? '', connInfo: i.connInfo ?? null, chanInfo: i.chanInfo ?? null };
}

function tags(t) {
  return t && Object.keys(t).length > 0 ? t : null;
}

function pub(channel, p) {
  return { channel, data: p.data ?? null, info: info(p.info), offset: p.offset || null, tags: tags(p.tags) };
}

function position(sp) {
  return sp ? { offset: sp.offset ?? 0, epoch: sp.epoch ?? '' } : null;
}

function subscribedFields(server, ctx) {
  return {
    server,
    channel: ctx.channel,
    recovered: !!ctx.recovered,
    wasRecovering: !!ctx.wasRecovering,
    positioned: !!ctx.positioned,
    recoverable: !!ctx.recoverable,
    streamPosition: position(ctx.streamPosition),
    data: ctx.data ?? null,
  };
}

// getToken lists: the connection's under null, a subscription's under its channel.
const tokenLists = new Map();

function tokenSource(scope, channel, list) {
  const state = { list: [...list], next: 0 };
  tokenLists.set(channel, state);
  return async () => {
    const index = state.next++;
    if (index >= state.list.length) {
      emit('getToken', { scope, channel, index, token: null, exhausted: true });
      throw new Error('agent: getToken list exhausted');
    }
    const entry = state.list[index];
    emit('getToken', { scope, channel, index, token: typeof entry === 'string' ? entry : null });
    if (entry && typeof entry === 'object') {
      if (entry.unauthorized) throw new UnauthorizedError('unauthorized');
      throw new Error(String(entry.error ?? 'agent: getToken error'));
    }
    return String(entry ?? '');
  };
}

let client = null;
// The WebSocket the SDK opened last (see TrackedWebSocket).
let currentWs = null;

// Handed to the SDK as its WebSocket constructor, to keep a reference to each
// socket it opens: dropTransport terminates it.
class TrackedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    currentWs = this;
  }
}

function needClient() {
  if (!client) throw new AgentError('no_client', 'no client: send "connect" first');
  return client;
}

function needSub(channel) {
  const sub = needClient().getSubscription(channel);
  if (!sub) throw new AgentError('no_subscription', `no subscription to "${channel}"`);
  return sub;
}

function via(cmd) {
  const v = cmd.via ?? 'client';
  if (v !== 'client' && v !== 'subscription') {
    throw new AgentError('bad_command', '"via" must be "client" or "subscription"');
  }
  return v;
}

function waitMs(cmd) {
  return typeof cmd.timeout === 'number' ? cmd.timeout : 5000;
}

const commands = {
  async connect(c) {
    if (client) throw new AgentError('already_connected', 'the agent has a client: use "connectAgain"');
    const url = need(c, 'url', 'string');
    const opts = {
      websocket: TrackedWebSocket,
      minReconnectDelay: c.minReconnectDelay ?? 100,
      maxReconnectDelay: c.maxReconnectDelay ?? 2000,
      timeout: c.timeout ?? 5000,
    };
    if (c.token !== undefined) opts.token = String(c.token);
    const list = optList(c, 'getToken');
    if (list !== undefined) opts.getToken = tokenSource('connection', null, list);
    if (c.name !== undefined) opts.name = String(c.name);
    if (c.data !== undefined) opts.data = c.data;
    if (c.headers !== undefined) opts.headers = c.headers;
    const cl = new Centrifuge(url, opts);
    cl.on('connecting', ctx => emit('connecting', { code: ctx.code, reason: ctx.reason }));
    cl.on('connected', ctx => emit('connected', { client: ctx.client, transport: ctx.transport ?? null, data: ctx.data ?? null }));
    cl.on('disconnected', ctx => emit('disconnected', { code: ctx.code, reason: ctx.reason }));
    cl.on('error', ctx => {
      const e = toError(ctx.error);
      emit('error', { type: ctx.type ?? null, code: e.code, message: e.message });
    });
    cl.on('message', ctx => emit('message', { data: ctx.data ?? null }));
    cl.on('subscribing', ctx => emit('subscribing', { server: true, channel: ctx.channel, code: null, reason: null }));
    cl.on('subscribed', ctx => emit('subscribed', subscribedFields(true, ctx)));
    cl.on('unsubscribed', ctx => emit('unsubscribed', { server: true, channel: ctx.channel, code: null, reason: null }));
    cl.on('publication', ctx => emit('publication', { server: true, ...pub(ctx.channel, ctx) }));
    cl.on('join', ctx => emit('join', { server: true, channel: ctx.channel, info: info(ctx.info) }));
    cl.on('leave', ctx => emit('leave', { server: true, channel: ctx.channel, info: info(ctx.info) }));
    client = cl;
    cl.connect();
    if (c.wait) await cl.ready(waitMs(c));
    return { state: cl.state };
  },

  async connectAgain(c) {
    const cl = needClient();
    cl.connect();
    if (c.wait) await cl.ready(waitMs(c));
    return { state: cl.state };
  },

  async disconnect() {
    const cl = needClient();
    cl.disconnect();
    return { state: cl.state };
  },

  async dropTransport() {
    needClient();
    if (!currentWs || currentWs.readyState !== WebSocket.OPEN) {
      throw new AgentError('no_transport', 'no open WebSocket to drop');
    }
    currentWs.terminate();
    return {};
  },

  async subscribe(c) {
    const cl = needClient();
    const channel = need(c, 'channel', 'string');
    let sub = cl.getSubscription(channel);
    if (!sub) {
      const opts = {
        minResubscribeDelay: c.minResubscribeDelay ?? 100,
        maxResubscribeDelay: c.maxResubscribeDelay ?? 2000,
      };
      if (c.token !== undefined) opts.token = String(c.token);
      const list = optList(c, 'getToken');
      if (list !== undefined) opts.getToken = tokenSource('subscription', channel, list);
      if (c.joinLeave !== undefined) opts.joinLeave = !!c.joinLeave;
      if (c.recoverable !== undefined) opts.recoverable = !!c.recoverable;
      if (c.positioned !== undefined) opts.positioned = !!c.positioned;
      if (c.since !== undefined && c.since !== null) {
        if (typeof c.since !== 'object') throw new AgentError('bad_command', '"since" must be {offset,epoch}');
        opts.since = { offset: Number(c.since.offset ?? 0), epoch: String(c.since.epoch ?? '') };
      }
      if (c.data !== undefined) opts.data = c.data;
      sub = cl.newSubscription(channel, opts);
      sub.on('subscribing', ctx => emit('subscribing', { server: false, channel, code: ctx.code, reason: ctx.reason }));
      sub.on('subscribed', ctx => emit('subscribed', subscribedFields(false, ctx)));
      sub.on('unsubscribed', ctx => emit('unsubscribed', { server: false, channel, code: ctx.code, reason: ctx.reason }));
      sub.on('publication', ctx => emit('publication', { server: false, ...pub(channel, ctx) }));
      sub.on('join', ctx => emit('join', { server: false, channel, info: info(ctx.info) }));
      sub.on('leave', ctx => emit('leave', { server: false, channel, info: info(ctx.info) }));
      sub.on('error', ctx => {
        const e = toError(ctx.error);
        emit('subscriptionError', { channel, type: ctx.type ?? null, code: e.code, message: e.message });
      });
    }
    sub.subscribe();
    if (c.wait) await sub.ready(waitMs(c));
    return { state: sub.state };
  },

  async unsubscribe(c) {
    const channel = need(c, 'channel', 'string');
    const sub = needSub(channel);
    sub.unsubscribe();
    if (c.remove) {
      client.removeSubscription(sub);
      tokenLists.delete(channel);
    }
    return { state: sub.state };
  },

  async publish(c) {
    const channel = need(c, 'channel', 'string');
    if (!('data' in c)) throw new AgentError('bad_command', '"publish" needs "data"');
    if (via(c) === 'subscription') await needSub(channel).publish(c.data);
    else await needClient().publish(channel, c.data);
    return {};
  },

  async presence(c) {
    const channel = need(c, 'channel', 'string');
    const r = via(c) === 'subscription' ? await needSub(channel).presence() : await needClient().presence(channel);
    const clients = {};
    for (const [id, i] of Object.entries(r.clients ?? {})) clients[id] = info(i);
    return { clients };
  },

  async presenceStats(c) {
    const channel = need(c, 'channel', 'string');
    const r = via(c) === 'subscription' ? await needSub(channel).presenceStats() : await needClient().presenceStats(channel);
    return { numClients: r.numClients ?? 0, numUsers: r.numUsers ?? 0 };
  },

  async history(c) {
    const channel = need(c, 'channel', 'string');
    const opts = {};
    if (c.limit !== undefined) opts.limit = Number(c.limit);
    if (c.since !== undefined && c.since !== null) {
      if (typeof c.since !== 'object') throw new AgentError('bad_command', '"since" must be {offset,epoch}');
      opts.since = { offset: Number(c.since.offset ?? 0), epoch: String(c.since.epoch ?? '') };
    }
    if (c.reverse !== undefined) opts.reverse = !!c.reverse;
    const r = via(c) === 'subscription' ? await needSub(channel).history(opts) : await needClient().history(channel, opts);
    return {
      publications: (r.publications ?? []).map(p => pub(channel, p)),
      offset: r.offset ?? 0,
      epoch: r.epoch ?? '',
    };
  },

  async rpc(c) {
    const method = need(c, 'method', 'string');
    const r = await needClient().rpc(method, c.data ?? null);
    return { data: r.data ?? null };
  },

  async addTokens(c) {
    const tokens = optList(c, 'tokens');
    if (tokens === undefined) throw new AgentError('bad_command', '"addTokens" needs "tokens"');
    const key = c.channel ?? null;
    const state = tokenLists.get(key);
    if (!state) throw new AgentError('bad_command', `no getToken list for ${key === null ? 'the connection' : `"${key}"`}`);
    state.list.push(...tokens);
    return { total: state.list.length };
  },

  async state() {
    if (!client) return { client: null, subscriptions: {} };
    const subscriptions = {};
    for (const [ch, sub] of Object.entries(client.subscriptions())) subscriptions[ch] = sub.state;
    return { client: client.state, subscriptions };
  },

  async exit() {
    return {};
  },
};

async function handle(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ ok: false, reqId: null, error: { code: 'bad_json', message: `not JSON: ${e.message}` } });
    return;
  }
  const reqId = cmd && typeof cmd === 'object' && 'reqId' in cmd ? cmd.reqId : null;
  try {
    if (!cmd || typeof cmd !== 'object' || Array.isArray(cmd) || typeof cmd.cmd !== 'string') {
      throw new AgentError('bad_command', 'a command is an object with a string "cmd"');
    }
    const f = Object.prototype.hasOwnProperty.call(commands, cmd.cmd) ? commands[cmd.cmd] : null;
    if (!f) throw new AgentError('bad_command', `unknown command "${cmd.cmd}"`);
    const result = await f(cmd);
    out({ ok: true, reqId, result: result ?? null });
    if (cmd.cmd === 'exit') process.exit(0);
  } catch (e) {
    out({ ok: false, reqId, error: toError(e) });
  }
}

process.on('unhandledRejection', e => console.error('unhandled rejection:', e));
process.on('uncaughtException', e => console.error('uncaught exception:', e));

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', line => {
  if (line.trim() === '') return;
  handle(line);
});
rl.on('close', () => process.exit(0));

emit('ready', { sdk: 'js', version: sdkVersion, node: process.version });
