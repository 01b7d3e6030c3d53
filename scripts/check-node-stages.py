#!/usr/bin/env python3
# Usage: python3 scripts/check-node-stages.py [repo root]   (needs pyyaml, jinja2, shellcheck, dash, kubectl)
"""Offline checks of the node stages: render every template for every node (Ubuntu and RHEL facts), parse YAML,
shell-check every command, build the lb-ipam kustomization, and reject variables outside the documented context."""
import os, re, subprocess, sys, tempfile, tomllib, shutil, glob
import yaml, jinja2
from jinja2 import meta

ROOT = sys.argv[1] if len(sys.argv) > 1 else '/work/wt-nodes'
STAGES = ['00-preflight', '10-os-prep', '20-containerd', '30-kubernetes', '40-kubeadm-init', '50-cilium',
          '45-kubeadm-join', '60-longhorn-prereqs', '95-verify',
          # Day-two folders (kubeboot kubeconfig/backup/reset/upgrade/renew-certs/check).
          'kubeconfig/10-kubeconfig', 'backup/10-etcd-snapshot', 'reset/10-reset', 'upgrade/20-upgrade',
          'renew-certs/10-renew-certs', 'check/10-certificates']
# The variables the day-two commands add for their runs (src/daytwo.rs).
DAY_TWO_VARS = dict(backup_stamp='20260101-000000-abcd', backup_required=True, reset_purge_packages=True)
inv = tomllib.load(open(f'{ROOT}/inventory.toml', 'rb'))
env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
FACTS = {
    'debian': dict(os_family='debian', os_id='ubuntu', os_version='22.04', os_version_major=22, arch='x86_64',
                   hostname='h', cpus=8, memory_mb=16000, disk_gb=200, user='bsh'),
    'redhat': dict(os_family='redhat', os_id='rhel', os_version='9.4', os_version_major=9, arch='aarch64',
                   hostname='h', cpus=8, memory_mb=16000, disk_gb=200, user='bsh'),
}
errors = []
def err(msg): errors.append(msg); print('ERROR', msg)

# Outputs the shipped playbooks register (secret ones render as kubeboot's secret placeholder).
OUTPUTS = {'join_command': True, 'certificate_key': True}
def members(c): return [n for n in inv['nodes'] if n['cluster'] == c['name']]
def first_cp(c):
    cps = [n for n in members(c) if n.get('role', 'control-plane') == 'control-plane']
    return cps[0]['name'] if cps else None
def node_obj(n):
    c = [x for x in inv['clusters'] if x['name'] == n['cluster']][0]
    outputs = {k: (f'KUBEBOOT_SECRET_out:{n["name"]}/{k}' if sec else f'KUBEBOOT_OUTPUT_{k}') for k, sec in OUTPUTS.items()}
    return dict(name=n['name'], address=n['address'], port=22, user=inv['ssh']['user'], cluster=n['cluster'],
                role=n.get('role', 'control-plane'), first_control_plane=first_cp(c) == n['name'], outputs=outputs)
class NodeList(list):
    """`nodes`: a list that may also be indexed by name, as in kubeboot."""
    def __getitem__(self, key):
        if isinstance(key, str):
            return next(n for n in self if n['name'] == key)
        return super().__getitem__(key)
def cluster_obj(c, full=False):
    nodes = members(c)
    o = dict(name=c['name'], role=c['role'], lb_ip=c['lb_ip'], domain=c['domain'])
    o['nodes'] = [node_obj(n) for n in nodes] if full else [n['name'] for n in nodes]
    o['control_planes'] = [n['name'] for n in nodes if n.get('role', 'control-plane') == 'control-plane']
    o['workers'] = [n['name'] for n in nodes if n.get('role') == 'worker']
    o['first_control_plane'] = first_cp(c)
    o['multi_node'] = len(nodes) > 1
    o['api_host'] = c.get('vip') or nodes[0]['address']
    if c.get('vip'): o['vip'] = c['vip']
    return o

def sample_sources():
    """`sources` as kubeboot renders it for an Ubuntu node with the internet defaults (a sample: kubeboot's
    own tests check the real rendering; here it only has to exercise every branch of the scripts)."""
    repo = lambda url, suite='', components='', key='': dict(url=url, suite=suite, components=components, key=key)
    k8s = 'https://pkgs.k8s.io/core:/stable:/v1.34/'
    return dict(
        bundle=False, bundle_url='', images_url='', proxy='http://proxy.example:3128', no_proxy='10.0.0.0/8,.lab',
        containerd='docker',
        apt=dict(kubernetes=repo(k8s + 'deb/', '/', '', k8s + 'deb/Release.key'),
                 containerd=repo('https://download.docker.com/linux/ubuntu', '', 'stable',
                                 'https://download.docker.com/linux/ubuntu/gpg'),
                 distro=repo('http://mirror.example/ubuntu', '', 'main universe', 'http://mirror.example/key.asc')),
        dnf=dict(kubernetes=repo(k8s + 'rpm/', key=k8s + 'rpm/repodata/repomd.xml.key'),
                 containerd=repo('https://download.docker.com/linux/rhel/$releasever/$basearch/stable',
                                 key='https://download.docker.com/linux/rhel/gpg'),
                 distro=repo('')),
        releases={n: dict(url=f'https://example.invalid/{n}.tar.gz', sha256='0' * 64) for n in ('helm', 'kustomize')},
        charts={n: dict(repo=f'https://charts.example/{n}') for n in
                ('cilium', 'longhorn', 'kube-prometheus-stack', 'grafana', 'opensearch', 'fluent-bit')},
        registries=[dict(name='docker.io', mirror='https://mirror.example:5000', skip_verify=False, ca=True,
                         ca_pem='-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----', auth=True,
                         username_secret='registry_docker_io_username', password_secret='registry_docker_io_password')],
        urls=[dict(name='apt kubernetes', url=k8s + 'deb/', host='pkgs.k8s.io')],
    )

def context(n, facts, stage_vars):
    c = [c for c in inv['clusters'] if c['name'] == n['cluster']][0]
    ctx = dict(inv['vars'])
    ctx.update(DAY_TWO_VARS)
    ctx.update(stage_vars or {})
    ctx.update(node=node_obj(n), cluster=cluster_obj(c), clusters=[cluster_obj(x, True) for x in inv['clusters']],
               nodes=NodeList(node_obj(x) for x in inv['nodes']), outputs=node_obj(n)['outputs'],
               central=cluster_obj([x for x in inv['clusters'] if x['role'] == 'central'][0]),
               secrets=SecretNames(), sources=sample_sources(), facts=facts)
    ctx.update(facts)
    return ctx

class SecretNames(dict):
    """`secrets.NAME` / `secrets[NAME]`: a placeholder per name, as kubeboot sends before filling values in."""
    def __missing__(self, name):
        return f'KUBEBOOT_SECRET_{name}'
    __getattr__ = __missing__

def render(src, ctx, where):
    try:
        ast = env.parse(src)
        for name in meta.find_undeclared_variables(ast):
            if name not in ctx:
                err(f'{where}: undeclared variable {name}')
        return env.from_string(src).render(ctx)
    except jinja2.TemplateError as e:
        err(f'{where}: {e}'); return ''

def shellcheck(script, where):
    r = subprocess.run(['shellcheck', '-s', 'sh', '-S', os.environ.get('SEV','warning'), '-'], input=script, text=True, capture_output=True)
    if r.returncode != 0: err(f'{where}: shellcheck\n{r.stdout}{script}')
    r = subprocess.run(['dash', '-n'], input=script, text=True, capture_output=True)
    if r.returncode != 0: err(f'{where}: dash -n: {r.stderr}')

ALLOWED_TASK = {'name', 'run', 'copy', 'wait', 'http', 's3_buckets', 'fetch', 'interval', 'unless', 'when', 'retries', 'delay',
                'timeout', 'become', 'env', 'register', 'wait_for'}
# Jump-host tasks (kubeboot sends them itself): secrets only in these fields; no shell to check.
JUMP_CREDENTIALS = {'http': {'user', 'password'}, 's3_buckets': {'access_key', 'secret_key'}}
count = 0
for stage in STAGES:
    path = f'{ROOT}/playbooks/{stage}.yaml'
    book = yaml.safe_load(open(path))
    assert set(book) <= {'name', 'hosts', 'become', 'vars', 'tasks', 'wait_for', 'serial', 'once_per_cluster'}, (path, set(book))
    names = [t['name'] for t in book['tasks']]
    if len(names) != len(set(names)): err(f'{path}: duplicate task names')
    for fam, facts in FACTS.items():
        for n in inv['nodes']:
            ctx = context(n, facts, book.get('vars'))
            for t in book['tasks']:
                where = f'{stage}/{t["name"]}/{n["name"]}/{fam}'
                if set(t) - ALLOWED_TASK: err(f'{where}: unknown keys {set(t) - ALLOWED_TASK}')
                if sum(k in t for k in ('run', 'copy', 'wait', 'http', 's3_buckets', 'fetch')) != 1: err(f'{where}: need exactly one action')
                if 'when' in t:
                    w = render(t['when'], ctx, where + '/when').strip()
                    if w not in ('True', 'False'): err(f'{where}: when renders {w!r}')
                    if w == 'False': continue
                for kind, credentials in JUMP_CREDENTIALS.items():
                    for key, value in (t.get(kind) or {}).items():
                        for v in value if isinstance(value, list) else [value]:
                            if not isinstance(v, str): continue
                            s = render(v, ctx, f'{where}/{kind}.{key}')
                            if key not in credentials and 'KUBEBOOT_SECRET_' in s: err(f'{where}/{kind}.{key}: secret outside the credentials')
                for key in ('run', 'unless', 'wait'):
                    if key in t:
                        s = render(t[key], ctx, f'{where}/{key}')
                        shellcheck(s, f'{where}/{key}'); count += 1
                        if 'KUBEBOOT_SECRET_' in s: err(f'{where}/{key}: secret in a command')
                if 'fetch' in t:
                    for key in ('src', 'dest'):
                        render(t['fetch'][key], ctx, f'{where}/fetch.{key}')
                if 'copy' in t:
                    cp = t['copy']
                    if 'content' in cp: render(cp['content'], ctx, where + '/content')
                    render(cp['dest'], ctx, where + '/dest')
                    if 'src' in cp and not os.path.exists(f'{ROOT}/assets/{cp["src"]}'): err(f'{where}: missing asset')
print(f'{count} scripts checked')

# The kubeadm config heredoc renders to valid multi-document YAML.
book = yaml.safe_load(open(f'{ROOT}/playbooks/40-kubeadm-init.yaml'))
for n in inv['nodes']:
    config_task = next(t for t in book['tasks'] if t['name'] == 'kubeadm config')
    s = render(config_task['run'], context(n, FACTS['debian'], None), 'kubeadm config')
    body = s.split('<<EOF\n', 1)[1].split('\nEOF\n', 1)[0].replace('$kv', 'v1.34.2')
    docs = list(yaml.safe_load_all(body))
    kinds = [d['kind'] for d in docs]
    assert kinds == ['InitConfiguration', 'ClusterConfiguration', 'KubeletConfiguration'], kinds
    assert docs[0]['nodeRegistration']['taints'] == [] and docs[0]['skipPhases'] == ['addon/kube-proxy']
    assert docs[1]['proxy'] == {'disabled': True}
    assert docs[1]['controlPlaneEndpoint'] == f'{n["address"]}:6443'

# Cilium assets: render per node, YAML parse, expected values, kustomize build of lb-ipam.
for n in inv['nodes']:
    ctx = context(n, FACTS['debian'], None)
    out = tempfile.mkdtemp()
    for f in glob.glob(f'{ROOT}/assets/cilium/**/*', recursive=True):
        if os.path.isdir(f): continue
        rel = os.path.relpath(f, f'{ROOT}/assets/cilium')
        os.makedirs(os.path.dirname(f'{out}/{rel}'), exist_ok=True)
        text = render(open(f).read(), ctx, f'assets/cilium/{rel}/{n["name"]}')
        open(f'{out}/{rel}', 'w').write(text)
        list(yaml.safe_load_all(text))
    v = yaml.safe_load(open(f'{out}/chart/values.yaml'))
    c = [c for c in inv['clusters'] if c['name'] == n['cluster']][0]
    assert v['kubeProxyReplacement'] is True and v['k8sServiceHost'] == n['address'] and v['k8sServicePort'] == 6443
    assert v['ipam']['mode'] == 'kubernetes' and v['l2announcements']['enabled'] is True
    assert v['ingressController']['loadbalancerMode'] == 'shared'
    ann = v['ingressController']['service']['annotations']
    # kube-system's ingress shares the LB IP with the Thanos sidecar's Service in monitoring (tests/shipped_assets.rs).
    assert ann == {'lbipam.cilium.io/sharing-key': c['name'], 'lbipam.cilium.io/ips': c['lb_ip'],
                   'lbipam.cilium.io/sharing-cross-namespace': 'monitoring'}, ann
    assert v['hubble']['tls']['auto']['method'] == 'cronJob' and v['operator']['replicas'] == 1
    k = yaml.safe_load(open(f'{out}/chart/kustomization.yaml'))
    assert k['helmCharts'][0]['version'] == inv['vars']['cilium_version']
    r = subprocess.run(['kubectl', 'kustomize', f'{out}/lb-ipam'], capture_output=True, text=True)
    if r.returncode != 0: err(f'kubectl kustomize lb-ipam {n["name"]}: {r.stderr}'); continue
    objs = {o['kind']: o for o in yaml.safe_load_all(r.stdout)}
    pool = objs['CiliumLoadBalancerIPPool']
    assert pool['apiVersion'] == 'cilium.io/v2' and pool['spec']['blocks'] == [{'start': c['lb_ip'], 'stop': c['lb_ip']}]
    pol = objs['CiliumL2AnnouncementPolicy']
    assert pol['spec']['interfaces'] == inv['vars']['cilium_l2_interfaces'] and pol['spec']['loadBalancerIPs'] is True
    shutil.rmtree(out)
print('cilium assets rendered and built for', len(inv['nodes']), 'nodes')
print(f'{len(errors)} errors')
sys.exit(1 if errors else 0)
