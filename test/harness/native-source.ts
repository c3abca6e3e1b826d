/**
 * Integer constants of the C++ data plane read from its headers
 * (native/limits.h, native/frame.h): `constexpr <integer type> kName = <expr>;`
 * with the expression evaluated. For tests that compare a TypeScript or
 * JavaScript copy with the C++ original; anything outside that small subset
 * of C++ is an error, never a guess.
 */
import * as path from 'path';
import { REPO_ROOT } from './prereq';

export const LIMITS_H = path.join(REPO_ROOT, 'native', 'limits.h');

/** The source without comments (line and block), so that prose never parses as code. */
export function stripComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, '');
}

/**
 * Evaluates a constant expression of the headers: integer literals (hex,
 * suffixes u/l/ull), names defined before, + - * / % << >> | & and
 * parentheses, static_cast to an integer type. Throws on anything else.
 */
export function evaluateConstant(expression: string, known: ReadonlyMap<string, number>): number {
  const replaced = expression
    .trim()
    // C++14 digit separators: 2'000'000
    .replace(/(?<=[0-9a-fA-F])'(?=[0-9a-fA-F])/g, '')
    .replace(/\b(0[xX][0-9a-fA-F]+|[0-9]+)(?:[uU]?[lL]{0,2}|[lL]{1,2}[uU]?)\b/g, '$1')
    // A widening cast (static_cast<uint64_t>(x)) keeps x's value: the BigInt evaluation below never wraps.
    .replace(/\bstatic_cast<\s*(?:std::)?(?:u?int(?:8|16|32|64)_t|size_t)\s*>/g, '')
    .replace(/\b[A-Za-z_][A-Za-z0-9_]*\b/g, (name) => {
      if (/^0[xX]/.test(name)) return name;
      const value = known.get(name);
      if (value === undefined) throw new Error(`constant expression "${expression}": unknown name ${name}`);
      return `(${value})`;
    });
  if (!/^[0-9a-fA-FxX+\-*/%()<>|&\s]*$/.test(replaced)) {
    throw new Error(`constant expression "${expression}": expected integers and operators, found "${replaced}"`);
  }
  // Shifts past 31 bits would wrap in JS: evaluate in BigInt, then require a safe integer.
  const big = Function(`"use strict"; return (${replaced.replace(/(0[xX][0-9a-fA-F]+|\b[0-9]+\b)/g, '$1n')});`)() as bigint;
  const value = Number(big);
  if (!Number.isSafeInteger(value)) throw new Error(`constant expression "${expression}" = ${big}: not a safe integer`);
  return value;
}

/** Every `constexpr <integer type> kName = <expression>;` of a header, in order. */
export function readConstants(source: string, known: Map<string, number> = new Map()): Map<string, number> {
  const code = stripComments(source);
  for (const m of code.matchAll(/\bconstexpr\s+(?:std::)?(u?int(?:8|16|32|64)_t|size_t)\s+(k\w+)\s*=\s*([^;]+);/g)) {
    known.set(m[2], evaluateConstant(m[3], known));
  }
  return known;
}

