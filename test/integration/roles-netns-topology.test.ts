/**
 * The network-namespace topology the role-change tests stand on
 * (test/harness/netns.ts): two namespaces joined by a veth pair, a link the
 * test cuts both ways or one way and heals. Judged with real datagrams sent
 * by processes inside the namespaces, so a partition that leaks, or a heal
 * that does not heal, fails here and not as a puzzling daemon test. Also:
 * nothing of the pair shows in the host's network, and destroy() leaves no
 * namespace, interface or process behind.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import { makeNetnsPair, NetnsPair, NetnsSide } from '../harness/netns';
import { describeIntegration } from '../harness/prereq';

const PROBE_PORT = 9099;
const PROBE_MS = 1500;

/** Counts UDP datagrams sent from `from` to `to` for PROBE_MS by processes inside the namespaces. */
async function probe(pair: NetnsPair, from: NetnsSide, to: NetnsSide): Promise<number> {
  const dst = pair.end(to).address;
  const listen =
    `const s=require('dgram').createSocket('udp4');let n=0;s.on('message',()=>n++);` +
    `s.bind(${PROBE_PORT},'${dst}',()=>setTimeout(()=>{console.log(n);process.exit(0)},${PROBE_MS + 300}));`;
  const send =
    `const s=require('dgram').createSocket('udp4');let i=0;` +
    `const t=setInterval(()=>{s.send('x',${PROBE_PORT},'${dst}',()=>{});if(++i>=${PROBE_MS / 50}){clearInterval(t);setTimeout(()=>process.exit(0),50)}},50);`;
  const [l, s] = await Promise.all([
    pair.exec(to, process.execPath, ['-e', listen], { timeoutMs: 20_000 }),
    pair.exec(from, process.execPath, ['-e', send], { timeoutMs: 20_000 }),
  ]);
  if (l.code !== 0 || s.code !== 0) throw new Error(`probe ${from}->${to}: listener exited ${l.code} (${l.stderr}), sender ${s.code} (${s.stderr})`);
  return Number(l.stdout.toString().trim());
}

async function reach(pair: NetnsPair): Promise<{ aToB: boolean; bToA: boolean }> {
  const [ab, ba] = [await probe(pair, 'a', 'b'), await probe(pair, 'b', 'a')];
  return { aToB: ab > 0, bToA: ba > 0 };
}

describeIntegration('roles: network namespace pair', ['root', 'ip-netns', 'nraid-cli'], () => {
  let pair: NetnsPair;

  beforeAll(async () => {
    pair = await makeNetnsPair({ tag: 'topo' });
  }, 60_000);

  afterAll(async () => {
    await pair?.destroy();
  }, 60_000);

  test('each side has its address on its veth end; the host has neither end', async () => {
    for (const side of ['a', 'b'] as const) {
      const end = pair.end(side);
      const addr = (await pair.execOk(side, 'ip', ['-j', 'addr', 'show', 'dev', end.ifname])).toString();
      expect(JSON.parse(addr)[0].addr_info.map((x: { local: string }) => x.local)).toContain(end.address);
      expect(fs.existsSync(`/sys/class/net/${end.ifname}`)).toBe(false);
    }
    expect(pair.a.address).not.toBe(pair.b.address);
  });

  test('whole, cut both ways, healed, cut one way each way, healed: datagrams pass exactly where they should', async () => {
    expect(await reach(pair)).toEqual({ aToB: true, bToA: true });

    await pair.partition('both');
    expect(pair.partitioned).toBe('both');
    expect(await reach(pair)).toEqual({ aToB: false, bToA: false });

    await pair.heal();
    expect(pair.partitioned).toBeNull();
    expect(await reach(pair)).toEqual({ aToB: true, bToA: true });

    await pair.partition('aToB');
    expect(await reach(pair)).toEqual({ aToB: false, bToA: true });

    // Straight from one partition to another: the first is healed on the way.
    await pair.partition('bToA');
    expect(await reach(pair)).toEqual({ aToB: true, bToA: false });

    await pair.heal();
    expect(await reach(pair)).toEqual({ aToB: true, bToA: true });
  }, 90_000);

  test('destroy kills what runs inside and removes both namespaces', async () => {
    const other = await makeNetnsPair({ tag: 'topo2' });
    // A process that would outlive the test if destroy() forgot it (killed by the pair, not by us).
    const [file, argv] = other.command('a', process.execPath, ['-e', 'setInterval(()=>{},1000)']);
    const child = spawn(file, argv, { stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_c, sig) => resolve(sig)));
    for (let i = 0; i < 100 && (await other.pids('a')).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await other.pids('a')).toContain(child.pid);
    await other.destroy();
    expect(await exited).toBe('SIGKILL');
    const names = fs.existsSync('/run/netns') ? fs.readdirSync('/run/netns') : [];
    expect(names.filter((n) => n === other.a.ns || n === other.b.ns)).toEqual([]);
  }, 60_000);
});
