{#- A change of the cluster's size under load, with no request failing (`bootstrap.py scale`
    runs `salt-run state.orchestrate orch.scale pillar='{"sqlgate_scale": ...}'` once the
    provider has made the new hosts). The pillar's `sqlgate:hosts` is the cluster as it is to
    be; `sqlgate_scale:added` names the hosts just made, `sqlgate_scale:removed` the hosts that
    go (name: role), which the provider removes once this has run. In order:

    1. the formula's modules (and states) and fresh pillar and mine reach every host that
       stays (the hosts that go get the modules only and keep their pillar: they still run as
       they did until they stop);
    2. the database hosts: a new replica follows the primary (sqlgate.db.replication: it
       replays the primary's binary logs from their first transaction); nothing changes on the
       others;
    3. the new Proxies start; then, with a replica added or removed, each Proxy that stays,
       one at a time: its settings change, so it restarts (it drains first: the Gatekeepers
       open new transactions on another Proxy); without, all of them at once (nothing of
       theirs changes);
    4. the new Gatekeepers start (the balancer does not send to them yet); then the
       Gatekeepers that stay: their list of Proxies changes (re-read, no restart); with a
       Gatekeeper added or removed, their share of a key's rate while the rate store is down
       changes too, so they restart, one at a time, each taken out of the balancer around it
       (sqlgate_balancer.drain, then .ready);
    5. the balancer: each Gatekeeper that goes is drained, the new list is loaded (a reload:
       the connections it holds go on), and each new Gatekeeper is in once its checks pass;
    6. what goes stops, once nothing sends to it: the Gatekeepers (after step 5), the Proxies
       (no Gatekeeper lists them since step 4: open transactions finish while they drain), the
       replicas (no Proxy reads from them since step 3; their failover watch goes first);
    7. the monitor scrapes the new set of hosts.
    A step that fails stops the run there: the hosts after it are left as they were.

    State IDs: sqlgate-scale-sync, -sync-states, -pillar, -mine, -databases, -proxies-new,
    -<proxy> or -proxies, -gatekeepers-new, -<gatekeeper>[-drain|-ready] or -gatekeepers, -balancer[-<gatekeeper>-drain|-ready],
    -<host>-stop (and -<replica>-unwatch), -monitor. #}
{%- set hosts = salt['pillar.get']('sqlgate:hosts', {}) %}
{%- set change = salt['pillar.get']('sqlgate_scale', {}) %}
{%- set added = change.get('added', []) %}
{%- set removed = change.get('removed', {}) %}
{%- set members = {'primary': [], 'replica': [], 'proxy': [], 'gatekeeper': [],
                   'balancer': [], 'monitor': []} %}
{%- for name, host in hosts | dictsort %}
{%-   if host.role in members %}
{%-     do members[host.role].append(name) %}
{%-   endif %}
{%- endfor %}
{%- set going = {'replica': [], 'proxy': [], 'gatekeeper': []} %}
{%- for name, role in removed | dictsort %}
{%-   if role in going %}
{%-     do going[role].append(name) %}
{%-   endif %}
{%- endfor %}
{%- set balancer = members.balancer | first | default('') %}
{%- set staying = hosts | list | sort %}
{%- set databases = members.primary + members.replica %}
{%- set gatekeepers_change = going.gatekeeper or (added | select('in', members.gatekeeper) | list) %}
{%- set replicas_change = going.replica or (added | select('in', members.replica) | list) %}
{%- set services = {'proxy': ('sqlgate-proxy', 'sqlgate.proxy.service'),
                    'gatekeeper': ('sqlgate-gatekeeper', 'sqlgate.gatekeeper.service')} %}
{%- set timeout = salt['pillar.get']('sqlgate:rolling:step_timeout', 300) %}
{%- set previous = namespace(step='') %}

{%- macro requires() %}
{%-   if previous.step %}
    - require:
      - salt: {{ previous.step }}
{%-   endif %}
{%- endmacro %}

{%- macro function(id, name, targets, args=[], kwarg={}) %}

{{ id }}:
  salt.function:
    - name: {{ name }}
    - tgt: {{ targets | join(',') }}
    - tgt_type: list
{%-   if args %}
    - arg: {{ args | json }}
{%-   endif %}
{%-   if kwarg %}
    - kwarg: {{ kwarg | json }}
{%-   endif %}
    - timeout: {{ timeout }}
{{- requires() }}
{%-   set previous.step = id %}
{%- endmacro %}

{%- macro highstate(id, targets) %}

{{ id }}:
  salt.state:
    - tgt: {{ targets | join(',') }}
    - tgt_type: list
    - highstate: True
{{- requires() }}
{%-   set previous.step = id %}
{%- endmacro %}

{{- function('sqlgate-scale-sync', 'saltutil.sync_modules', staying + (removed | list | sort),
             kwarg={'refresh': True}) }}
{{- function('sqlgate-scale-sync-states', 'saltutil.sync_states', staying, kwarg={'refresh': True}) }}
{{- function('sqlgate-scale-pillar', 'saltutil.refresh_pillar', staying, kwarg={'wait': True}) }}
{{- function('sqlgate-scale-mine', 'mine.update', staying) }}
{{- highstate('sqlgate-scale-databases', databases) }}
{%- set new_proxies = added | select('in', members.proxy) | list %}
{%- if new_proxies %}
{{-   highstate('sqlgate-scale-proxies-new', new_proxies) }}
{%- endif %}
{%- set old_proxies = members.proxy | reject('in', new_proxies) | list %}
{%- if replicas_change %}
{%-   for host in old_proxies %}
{{-     highstate('sqlgate-scale-' ~ host, [host]) }}
{%-   endfor %}
{%- elif old_proxies %}
{{-   highstate('sqlgate-scale-proxies', old_proxies) }}
{%- endif %}
{%- set new_gatekeepers = added | select('in', members.gatekeeper) | list %}
{%- if new_gatekeepers %}
{{-   highstate('sqlgate-scale-gatekeepers-new', new_gatekeepers) }}
{%- endif %}
{%- set old_gatekeepers = members.gatekeeper | reject('in', new_gatekeepers) | list %}
{%- if gatekeepers_change %}
{%-   for host in old_gatekeepers %}
{%-     if balancer %}
{{-       function('sqlgate-scale-' ~ host ~ '-drain', 'sqlgate_balancer.drain', [balancer], [host]) }}
{%-     endif %}
{{-     highstate('sqlgate-scale-' ~ host, [host]) }}
{%-     if balancer %}
{{-       function('sqlgate-scale-' ~ host ~ '-ready', 'sqlgate_balancer.ready', [balancer], [host]) }}
{%-     endif %}
{%-   endfor %}
{%- elif old_gatekeepers %}
{{-   highstate('sqlgate-scale-gatekeepers', old_gatekeepers) }}
{%- endif %}
{%- if balancer %}
{%-   for host in going.gatekeeper %}
{{-     function('sqlgate-scale-balancer-' ~ host ~ '-drain', 'sqlgate_balancer.drain', [balancer], [host]) }}
{%-   endfor %}
{{-   highstate('sqlgate-scale-balancer', [balancer]) }}
{%-   for host in new_gatekeepers %}
{{-     function('sqlgate-scale-balancer-' ~ host ~ '-ready', 'sqlgate_balancer.ready', [balancer], [host]) }}
{%-   endfor %}
{%- endif %}
{%- for role in ('gatekeeper', 'proxy') %}
{%-   for host in going[role] %}
{{-     function('sqlgate-scale-' ~ host ~ '-stop', 'sqlgate_service.stop', [host], [services[role][0]]) }}
{%-   endfor %}
{%- endfor %}
{%- for host in going.replica %}
{{-   function('sqlgate-scale-' ~ host ~ '-unwatch', 'schedule.delete', [host], ['sqlgate-db-watch']) }}
{{-   function('sqlgate-scale-' ~ host ~ '-stop', 'sqlgate_service.stop', [host], ['database']) }}
{%- endfor %}
{%- if members.monitor %}
{{-   highstate('sqlgate-scale-monitor', members.monitor) }}
{%- endif %}
