/**
 * The data-link frame as native/frame.h defines it, read from the source:
 * the magic, the type and flag numbers, the header's fields with their C
 * offsets and sizes, which types carry a payload, and the payload bound from
 * native/limits.h. Tests that hand-encode frames, and the check of
 * bench/frame-codec.js, take the layout from here, so that a change to
 * frame.h shows up as a failing test instead of a stale copy.
 *
 * The parser knows exactly the C++ subset those headers use (constexpr
 * integers, enums with explicit values, one plain struct of fixed-width
 * integers); anything else is an error, never a guess.
 */
import * as fs from 'fs';
import * as path from 'path';
import { LIMITS_H, evaluateConstant, readConstants, stripComments } from './native-source';
import { REPO_ROOT } from './prereq';

export const FRAME_H = path.join(REPO_ROOT, 'native', 'frame.h');

export interface FrameField {
  /** camelCase of the C name: payload_crc -> payloadCrc. */
  name: string;
  offset: number;
  bytes: number;
}

export interface FrameLayout {
  magic: number;
  headerBytes: number;
  /** In declaration order. */
  fields: FrameField[];
  /** WRITE -> 1, RS_IS_IN_SYNC -> 10, ... (from kFrameWrite, kFrameRsIsInSync; kFrameTypeMax aside). */
  types: Record<string, number>;
  typeMax: number;
  /** WANT_RECV_ACK -> 1, ... (from kFlagWantRecvAck). */
  flags: Record<string, number>;
  /** Types whose length is a payload that follows the header (frame_has_payload). */
  typesWithPayload: string[];
  /** kRequestBytesMax: the largest payload. */
  payloadBytesMax: number;
  /** What frame.h's own static_asserts state (sizeof, offsetof), to check this parser against. */
  asserted: { sizeofHeader: number | null; offsets: Record<string, number> };
}

const C_INTEGER_BYTES: Record<string, number> = { uint8_t: 1, uint16_t: 2, uint32_t: 4, uint64_t: 8, int32_t: 4, int64_t: 8 };

/** kFrameRsIsInSync -> RS_IS_IN_SYNC (after the prefix). */
function screamingSnake(camel: string): string {
  return camel.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();
}

function camelCase(snake: string): string {
  return snake.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

/** The entries of `enum <name> : <type> { ... };`, values evaluated in order. */
function readEnum(code: string, name: string, known: Map<string, number>): Array<[string, number]> {
  const m = new RegExp(`\\benum\\s+${name}\\s*:\\s*\\w+\\s*\\{([^}]*)\\}`).exec(code);
  if (m === null) throw new Error(`native/frame.h: expected an enum ${name}, found none`);
  const entries: Array<[string, number]> = [];
  for (const item of m[1].split(',').map((s) => s.trim()).filter((s) => s !== '')) {
    const e = /^(k\w+)\s*=\s*(.+)$/s.exec(item);
    if (e === null) throw new Error(`enum ${name}: expected "kName = value", found "${item}"`);
    const value = evaluateConstant(e[2], known);
    known.set(e[1], value);
    entries.push([e[1], value]);
  }
  return entries;
}

/** The fields of `struct <name> { ... };` with C offsets (natural alignment) and the struct's size. */
function readStruct(code: string, name: string): { fields: FrameField[]; sizeBytes: number } {
  const m = new RegExp(`\\bstruct\\s+${name}\\s*\\{([^}]*)\\}`).exec(code);
  if (m === null) throw new Error(`native/frame.h: expected a struct ${name}, found none`);
  const fields: FrameField[] = [];
  let offset = 0;
  let alignMax = 1;
  for (const declaration of m[1].split(';').map((s) => s.trim()).filter((s) => s !== '')) {
    const d = /^(?:std::)?(\w+)\s+(\w+)$/.exec(declaration);
    const bytes = d === null ? undefined : C_INTEGER_BYTES[d[1]];
    if (d === null || bytes === undefined) throw new Error(`struct ${name}: expected "<fixed-width integer> <name>", found "${declaration}"`);
    offset = Math.ceil(offset / bytes) * bytes;
    fields.push({ name: camelCase(d[2]), offset, bytes });
    offset += bytes;
    alignMax = Math.max(alignMax, bytes);
  }
  return { fields, sizeBytes: Math.ceil(offset / alignMax) * alignMax };
}

/** The layout from the text of frame.h and limits.h (the files by default). */
export function readFrameLayout(
  frameSource: string = fs.readFileSync(FRAME_H, 'utf8'),
  limitsSource: string = fs.readFileSync(LIMITS_H, 'utf8'),
): FrameLayout {
  const known = readConstants(limitsSource);
  readConstants(frameSource, known);
  const code = stripComments(frameSource);
  const magic = known.get('kFrameMagic');
  const payloadBytesMax = known.get('kRequestBytesMax');
  if (magic === undefined || payloadBytesMax === undefined) {
    throw new Error('native/frame.h, native/limits.h: expected constexpr kFrameMagic and kRequestBytesMax, found them missing');
  }
  const types: Record<string, number> = {};
  let typeMax: number | null = null;
  for (const [cName, value] of readEnum(code, 'FrameType', known)) {
    if (cName === 'kFrameTypeMax') typeMax = value;
    else types[screamingSnake(cName.replace(/^kFrame/, ''))] = value;
  }
  if (typeMax === null) throw new Error('enum FrameType: expected kFrameTypeMax, found none');
  const flags: Record<string, number> = {};
  for (const [cName, value] of readEnum(code, 'FrameFlag', known)) flags[screamingSnake(cName.replace(/^kFlag/, ''))] = value;
  const { fields, sizeBytes } = readStruct(code, 'FrameHeader');
  const hasPayload = /\bframe_has_payload\s*\([^)]*\)\s*\{\s*return\s+([^;]+);/.exec(code);
  if (hasPayload === null) throw new Error('native/frame.h: expected frame_has_payload(type) { return ...; }, found none');
  const typesWithPayload = [...hasPayload[1].matchAll(/\bkFrame(\w+)/g)].map((t) => screamingSnake(t[1]));
  const sizeof = /static_assert\s*\(\s*sizeof\s*\(\s*FrameHeader\s*\)\s*==\s*(\d+)\s*\)/.exec(code);
  const offsets: Record<string, number> = {};
  for (const o of code.matchAll(/static_assert\s*\(\s*offsetof\s*\(\s*FrameHeader\s*,\s*(\w+)\s*\)\s*==\s*(\d+)\s*\)/g)) {
    offsets[camelCase(o[1])] = Number(o[2]);
  }
  return {
    magic,
    headerBytes: sizeBytes,
    fields,
    types,
    typeMax,
    flags,
    typesWithPayload,
    payloadBytesMax,
    asserted: { sizeofHeader: sizeof === null ? null : Number(sizeof[1]), offsets },
  };
}

/** Offset of a header field; throws naming the fields there are when `name` is not one. */
export function fieldOffset(layout: FrameLayout, name: string): number {
  const field = layout.fields.find((f) => f.name === name);
  if (field === undefined) throw new Error(`FrameHeader has no field ${name}; it has ${layout.fields.map((f) => f.name).join(', ')}`);
  return field.offset;
}
