/**
 * # messenger-js/node
 *
 * What only works on Node: the {@link FileStore}, a client store in a JSON file.
 * Everything else comes from `messenger-js`.
 *
 * ```ts
 * import WebSocket from "ws";
 * import { MessengerClient } from "messenger-js";
 * import { FileStore } from "messenger-js/node";
 *
 * const store = await FileStore.open("alice.messenger.json");
 * const client = new MessengerClient({ url: "ws://127.0.0.1:8080/ws", token: "alice", WebSocket, store });
 * ```
 *
 * @packageDocumentation
 */

export { FileStore } from "./file-store.js";
