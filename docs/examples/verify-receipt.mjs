// Verify an ndop-receipt/1 file without ndop (Node 20 or later, built-in modules only).
//   node verify-receipt.mjs RECEIPT.json PUBLIC_KEY_HEX
// PUBLIC_KEY_HEX is the 64 hex characters `ndop keys public` prints.
// Exit 0 verified; 1 the receipt is invalid; 2 the file cannot be read or the key is malformed.
// Format: docs/receipts.md.
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

const FORMAT = "ndop-receipt/1";
const SPKI_ED25519_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const TOP_LEVEL = ["format", "statement", "signing_key_id", "body", "signature"];
// ReceiptBody (proto/ndop/v1/ndop.proto): field number -> [statement key, wire type, kind].
const FIELDS = {
  1: ["format", 2, "string"], 2: ["organisation", 2, "string"], 3: ["request_id", 2, "string"],
  4: ["issued_at", 2, "timestamp"], 5: ["mode", 2, "string"], 6: ["purpose", 2, "string"],
  7: ["register_id", 2, "string"], 8: ["register_version", 0, "uint64"],
  9: ["register_count", 0, "uint64"], 10: ["items_checked", 0, "uint64"],
  11: ["submitted_sha256", 2, "hex"],
};
const TIMESTAMP_FIELDS = { 1: ["seconds", 0, "int64"], 2: ["nanos", 0, "int32"] };

function stop(code, sentence) {
  console.error(`receipt NOT verified: ${sentence}`);
  process.exit(code);
}
const fail = (sentence) => stop(1, sentence);

// --- protobuf wire format: varints (wire type 0) and length-delimited fields (wire type 2) ---
function varint(buf, at) {
  let value = 0n;
  for (let shift = 0n; shift < 70n; shift += 7n) {
    if (at >= buf.length) break;
    const byte = buf[at++];
    value |= BigInt(byte & 0x7f) << shift;
    if (byte < 0x80) {
      return value < 1n << 64n ? [value, at] : fail("the signed body holds a varint over 64 bits.");
    }
  }
  return fail("the signed body is not a valid protobuf message.");
}

function decode(buf, fields) {
  const out = {};
  let at = 0, last = 0;
  while (at < buf.length) {
    let tag;
    [tag, at] = varint(buf, at);
    const number = Number(tag >> 3n), wire = Number(tag & 7n), field = fields[number];
    if (!field || field[1] !== wire) {
      fail(`the signed body holds field ${number} with wire type ${wire}, which the format lacks.`);
    }
    if (number <= last) fail("the signed body repeats a field or is out of field order.");
    last = number;
    if (wire === 0) { [out[field[0]], at] = varint(buf, at); continue; }
    let length;
    [length, at] = varint(buf, at);
    const end = at + Number(length);
    if (end > buf.length) fail("the signed body is truncated.");
    out[field[0]] = buf.subarray(at, end);
    at = end;
  }
  return out;
}

function rfc3339(bytes) {
  const ts = decode(bytes ?? Buffer.alloc(0), TIMESTAMP_FIELDS);
  const seconds = BigInt.asIntN(64, ts.seconds ?? 0n), nanos = Number(ts.nanos ?? 0n);
  // Protobuf's Timestamp range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
  if (seconds < -62135596800n || seconds > 253402300799n || nanos > 999999999) {
    fail("the signed issued_at is out of range.");
  }
  const whole = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  // As protobuf's JSON mapping writes it: no fraction, or 3, 6 or 9 digits, the fewest exact.
  const digits = String(nanos).padStart(9, "0");
  const kept = nanos % 1e6 === 0 ? 3 : nanos % 1e3 === 0 ? 6 : 9;
  return `${whole}${nanos === 0 ? "" : `.${digits.slice(0, kept)}`}Z`;
}

function utf8(bytes) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return fail("the signed body holds a string that is not UTF-8.");
  }
}

// The statement exactly as it must read: proto3 omits zero values, so absent means 0 or "".
function signedStatement(body) {
  const raw = decode(body, FIELDS), statement = {};
  for (const [name, , kind] of Object.values(FIELDS)) {
    const value = raw[name];
    if (kind === "uint64") statement[name] = value ?? 0n;
    else if (kind === "timestamp") statement[name] = rfc3339(value);
    else if (kind === "hex") statement[name] = (value ?? Buffer.alloc(0)).toString("hex");
    else statement[name] = utf8(value ?? Buffer.alloc(0));
  }
  return statement;
}

// --- the receipt file ---
function rejectAmbiguousJson(text) {
  // JSON.parse keeps the last of two equal keys and reads 42.0 as 42: a file that says a thing
  // twice, or writes a number the format does not, is refused.
  const stack = [];
  const tokens = text.match(/"(?:[^"\\]|\\.)*"\s*:?|[{}[\]]|-?[0-9][0-9.eE+-]*/g) ?? [];
  for (const token of tokens) {
    if (/^-?[0-9]/.test(token)) {
      if (!/^(0|[1-9][0-9]*)$/.test(token)) fail("the receipt holds a number not an integer.");
    } else if (token === "{") stack.push(new Set());
    else if (token === "[") stack.push(null);
    else if (token === "}" || token === "]") stack.pop();
    else if (token.endsWith(":")) {
      const key = JSON.parse(token.slice(0, -1).trim());
      if (stack.at(-1).has(key)) fail("the receipt gives a key twice, so it can be read two ways.");
      stack.at(-1).add(key);
    }
  }
}

function exactKeys(object, names, where) {
  if (typeof object !== "object" || object === null || Array.isArray(object)) {
    fail(`${where} is not a JSON object.`);
  }
  for (const name of names) {
    if (!Object.hasOwn(object, name)) fail(`${where} lacks the field ${name}.`);
  }
  if (Object.keys(object).length !== names.length) {
    fail(`${where} has fields that are not part of ${FORMAT} and not signed.`);
  }
}

function canonicalBase64(text, name) {
  const bytes = Buffer.from(typeof text === "string" ? text : "", "base64");
  if (typeof text !== "string" || bytes.toString("base64") !== text) {
    fail(`the receipt's ${name} is not canonical base64.`);
  }
  return bytes;
}

function sameAsSigned(readable, signed) {
  for (const [name, value] of Object.entries(signed)) {
    const given = readable[name];
    const same = typeof value === "bigint"
      ? Number.isSafeInteger(given) && BigInt(given) === value
      : given === value;
    if (!same) fail(`the readable statement's ${name} differs from what the server signed.`);
  }
}

function main([receiptPath, keyHex]) {
  if (!receiptPath || !/^[0-9a-fA-F]{64}$/.test(keyHex ?? "")) {
    stop(2, "usage: node verify-receipt.mjs RECEIPT.json PUBLIC_KEY_HEX (64 hex characters).");
  }
  let text, receipt;
  try {
    text = readFileSync(receiptPath, "utf8");
  } catch {
    stop(2, "the receipt file cannot be read.");
  }
  try {
    receipt = JSON.parse(text);
  } catch {
    fail("the receipt is not JSON.");
  }
  rejectAmbiguousJson(text);
  exactKeys(receipt, TOP_LEVEL, "the receipt");
  if (receipt.format !== FORMAT) fail(`this is not an ${FORMAT} receipt.`);
  const statementKeys = Object.values(FIELDS).map(([name]) => name);
  exactKeys(receipt.statement, statementKeys, "the receipt's statement");

  const rawKey = Buffer.from(keyHex, "hex");
  const keyId = createHash("sha256").update(rawKey).digest("hex").slice(0, 16);
  if (receipt.signing_key_id !== keyId) {
    fail("the receipt names a signing key other than the public key given.");
  }
  const spki = Buffer.concat([SPKI_ED25519_PREFIX, rawKey]);
  const publicKey = createPublicKey({ key: spki, format: "der", type: "spki" });
  const body = canonicalBase64(receipt.body, "body");
  const signature = canonicalBase64(receipt.signature, "signature");
  let valid = false;
  try {
    valid = signature.length === 64 && verify(null, body, publicKey, signature);
  } catch {
    valid = false;
  }
  if (!valid) {
    fail("the signature does not verify: the receipt was altered or signed by another key.");
  }

  const signed = signedStatement(body);
  if (signed.format !== FORMAT) fail(`the signed body is not an ${FORMAT} receipt.`);
  sameAsSigned(receipt.statement, signed);
  console.log("receipt verified: signed by the given key, statement equals the signed body");
  console.log(JSON.stringify(signed, (_, v) => (typeof v === "bigint" ? Number(v) : v), 2));
}

try {
  main(process.argv.slice(2));
} catch {
  fail(`the file could not be read as an ${FORMAT} receipt.`);
}
