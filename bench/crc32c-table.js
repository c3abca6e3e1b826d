'use strict';
/**
 * CRC-32C (Castagnoli) in plain JavaScript, one 256-entry table, one byte per
 * step: the baseline the native crc32c is measured against. Same convention
 * as the addon: crc32c(data, seed = 0), where a previous result as seed
 * continues the checksum.
 */
const POLYNOMIAL_REFLECTED = 0x82f63b78;

const TABLE = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLYNOMIAL_REFLECTED : c >>> 1;
    table[n] = c;
  }
  return table;
})();

function crc32cTable(data, seed = 0) {
  let crc = ~seed;
  for (let i = 0; i < data.length; i++) crc = TABLE[(crc ^ data[i]) & 0xff] ^ (crc >>> 8);
  return ~crc >>> 0;
}

module.exports = { crc32cTable };
