"""Server-side instructions per request, counted by callgrind, so that two
builds can be compared on a machine busy with other work (BENCHMARKS.md,
issue 14).

Runs BINARY (`pepper`) under `valgrind --tool=callgrind` on a temporary data
folder, on loopback, with durability `sync`; sends N attribute events
(`POST /v1/events`) and N tuple reads (`GET /v1/tuples`) over one keep-alive
connection; stops it with SIGTERM. The same run with no requests is
subtracted, so start-up and shutdown do not count.

With a fourth argument `auth`, the site runs with auth on and every
request carries the token of a principal allowed just what they need
(created in both runs, so it does not count either).

usage: python3 scripts/callgrind-http.py BINARY LABEL N [auth]"""
import subprocess, sys, tempfile, http.client, json, os, re, glob, time, signal
binary, label, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
auth = len(sys.argv) > 4 and sys.argv[4] == 'auth'
ADMIN = 'callgrind-admin-token-0123456789abcdef'
def run(count):
    d = tempfile.mkdtemp()
    out = f'/tmp/cg-{label}-{count}.out'
    extra = []
    if auth:
        with open(os.path.join(d, 'admin-token'), 'w') as f:
            f.write(ADMIN + '\n')
        extra = ['--admin-token-file', os.path.join(d, 'admin-token'), '--publish-quota-per-s', '10000000']
    p = subprocess.Popen(['valgrind','--tool=callgrind',f'--callgrind-out-file={out}',binary,'serve','--data',os.path.join(d, 'data'),'--site','bench','--listen','127.0.0.1:0','--durability','sync'] + extra,stdout=subprocess.PIPE,stderr=subprocess.DEVNULL,text=True)
    line = p.stdout.readline()
    port = int(re.search(r':(\d+)', line.split('http://')[1]).group(1))
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    headers = {}
    if auth:
        grants = [{"action": "publish", "resource": "/bench.example.com/"}, {"action": "tuples.read", "resource": "/bench.example.com/"}]
        admin = {'content-type': 'application/json', 'authorization': 'Bearer ' + ADMIN}
        c.request('POST', '/v1/auth/principals', json.dumps({"name": "load", "grants": grants}), admin)
        r = c.getresponse(); r.read(); assert r.status == 201, r.status
        c.request('POST', '/v1/auth/principals/load/tokens', '{}', admin)
        r = c.getresponse(); token = json.loads(r.read())['token']; assert r.status == 201, r.status
        headers = {'authorization': 'Bearer ' + token}
    for i in range(count):
        body = json.dumps({"channel": f"/bench.example.com/node/n{i%100}/", "type": "attribute", "payload": {"field": "load", "value": str(i)}})
        c.request('POST','/v1/events',body,{'content-type':'application/json', **headers})
        r = c.getresponse(); r.read(); assert r.status == 200, r.status
    for i in range(count):
        c.request('GET',f'/v1/tuples?channel=/bench.example.com/node/n{i%100}/',headers=headers)
        r = c.getresponse(); r.read(); assert r.status == 200, r.status
    c.close()
    p.send_signal(signal.SIGTERM); p.wait(timeout=120)
    total = 0
    for f in glob.glob(out+'*'):
        for l in open(f):
            if l.startswith('summary:') or l.startswith('totals:'):
                total = max(total, int(l.split()[1]))
    return total
base = run(0); full = run(n)
print(f'{label}: base {base} full {full} per request pair {(full-base)/n:.0f}')
