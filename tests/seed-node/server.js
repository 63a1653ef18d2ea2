// Reconstruction of the tutorial Node.js WebSocket + Redis pub/sub server
// described in the roomcast seed document. Kept deliberately close to the
// seed; see README.md for what was added to make it runnable.
"use strict";

const { WebSocketServer } = require("ws");
const { createClient } = require("redis");

const PORT = Number(process.env.PORT || 8080);
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";

const publishClient = createClient({ url: REDIS_URL });
const subscribeClient = createClient({ url: REDIS_URL });

// { [id]: { ws, rooms: string[] } }
const subscription = {};

function randomId() {
    return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

// True when exactly one local user has `roomId` in its rooms, i.e. the user
// that just subscribed is the first one on this server.
function oneUserSubscribedTo(roomId) {
    let totalInterestedPeople = 0;
    Object.keys(subscription).forEach((userId) => {
        if (subscription[userId].rooms.includes(roomId)) {
            totalInterestedPeople++;
        }
    });
    return totalInterestedPeople === 1;
}

// roomcast rule: strings go out verbatim, any other JSON value is re-serialised.
function toWire(message) {
    return typeof message === "string" ? message : JSON.stringify(message);
}

const wss = new WebSocketServer({ port: PORT });

wss.on("connection", function connection(userSocket) {
    const id = randomId();
    subscription[id] = {
        ws: userSocket,
        rooms: []
    };

    userSocket.on("message", function message(data) {
        const userMessage = JSON.parse(data.toString());

        if (userMessage.type === "SUBSCRIBE") {
            subscription[id].rooms.push(userMessage.room);

            if (oneUserSubscribedTo(userMessage.room)) {
                subscribeClient.subscribe(userMessage.room, (payload) => {
                    // Use the roomId carried in the published payload (not the
                    // outer client message) to pick the local recipients.
                    const parsed = JSON.parse(payload);
                    Object.keys(subscription).forEach((userId) => {
                        const { ws, rooms } = subscription[userId];
                        if (rooms.includes(parsed.roomId)) {
                            ws.send(toWire(parsed.message));
                        }
                    });
                });
            }
        }

        if (userMessage.type === "sendMessage") {
            const message = userMessage.message;
            const roomId = userMessage.roomId;

            publishClient.publish(roomId, JSON.stringify({
                type: "sendMessage",
                roomId: roomId,
                message
            }));
        }
    });

    // Forget the user locally; the Redis channel stays subscribed (as in the seed).
    userSocket.on("close", () => {
        delete subscription[id];
    });
});

const listening = new Promise((resolve, reject) => {
    wss.once("listening", resolve);
    wss.once("error", reject);
});

Promise.all([listening, publishClient.connect(), subscribeClient.connect()])
    .then(() => {
        console.log(`seed listening on ${PORT}`);
    })
    .catch((err) => {
        console.error(err);
        process.exit(1);
    });
