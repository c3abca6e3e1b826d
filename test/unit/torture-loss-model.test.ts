/**
 * The torture runner's zero-loss model (test/torture/loss-model.ts), without
 * root: which block contents each node may hold after writes acknowledged
 * with and without the peer, a discard, a settle point and a forced rebase.
 * Each case has a content that must be refused, so a model that accepts
 * everything fails here.
 */
import { blockHash, LossModel, MODEL_BLOCK_BYTES, ZERO_BLOCK_HASH } from '../torture/loss-model';

const B = MODEL_BLOCK_BYTES;
const fill = (byte: number, blocks = 1): Buffer => Buffer.alloc(blocks * B, byte);
const h = (byte: number): string => blockHash(fill(byte));

describe('torture LossModel', () => {
  test('a write acknowledged on both binds both; a later unacknowledged one may or may not be there', () => {
    const m = new LossModel(4 * B);
    const w1 = m.issue(0, 0, fill(1));
    m.durableOn(w1, 'alpha');
    m.durableOn(w1, 'beta');
    m.issue(1, 0, fill(2)); // in flight at a crash
    expect({
      betaOld: m.checkHash('beta', 0, h(1)),
      betaNewer: m.checkHash('beta', 0, h(2)),
      betaZero: m.checkHash('beta', 0, ZERO_BLOCK_HASH)?.allowedWrites,
      untouchedBlockZero: m.checkHash('beta', 1, ZERO_BLOCK_HASH),
      untouchedBlockJunk: m.checkHash('beta', 1, h(9))?.block,
    }).toEqual({ betaOld: undefined, betaNewer: undefined, betaZero: [0, 1], untouchedBlockZero: undefined, untouchedBlockJunk: 1 });
  });

  test('a write acknowledged by the Primary alone (apart, or protocol A/B) binds only the Primary', () => {
    const m = new LossModel(2 * B);
    m.durableOn(m.issue(0, 0, fill(1)), 'alpha');
    expect({ beta: m.checkHash('beta', 0, ZERO_BLOCK_HASH), alpha: m.checkHash('alpha', 0, ZERO_BLOCK_HASH)?.allowed }).toEqual({ beta: undefined, alpha: [h(1)] });
  });

  test('a multi-block write is checked per block; discard frees the victim; settle collapses the history', () => {
    const m = new LossModel(4 * B);
    const w = m.issue(0, B, fill(3, 2));
    m.durableOn(w, 'alpha');
    m.durableOn(w, 'beta');
    const before = { b1: m.checkHash('beta', 1, ZERO_BLOCK_HASH)?.block, b2: m.checkHash('beta', 2, ZERO_BLOCK_HASH)?.block };
    m.discard('beta');
    const afterDiscard = m.checkHash('beta', 1, ZERO_BLOCK_HASH);
    m.settle([ZERO_BLOCK_HASH, h(3), h(3), ZERO_BLOCK_HASH]);
    const afterSettle = { alphaStale: m.checkHash('alpha', 1, ZERO_BLOCK_HASH)?.block, alphaOk: m.checkHash('alpha', 1, h(3)) };
    expect({ before, afterDiscard, afterSettle }).toEqual({ before: { b1: 1, b2: 2 }, afterDiscard: undefined, afterSettle: { alphaStale: 1, alphaOk: undefined } });
  });

  test('a forced rebase makes one node the truth and the other unknown until the next settle point', () => {
    const m = new LossModel(B);
    m.rebaseOn('beta', [h(7)]);
    expect({
      betaOther: m.checkHash('beta', 0, h(8))?.allowed,
      alphaAnything: m.checkHash('alpha', 0, h(8)),
      alphaUnknown: m.isUnknown('alpha'),
    }).toEqual({ betaOther: [h(7)], alphaAnything: undefined, alphaUnknown: true });
  });
});
