#!/usr/bin/env python3
"""Regenerates the hand-made seeds in fuzz/corpus/<target>/ (issue 10). Run from a directory holding the
openssl-made pairs README.md lists:

    SEED_KEYS=$PWD python3 /path/to/fuzz/seeds.py

The cert_pair seeds need throwaway self-signed pairs made with openssl in $SEED_KEYS (README.md lists the
commands). Those keys are test material for the name a.test/b.test only and protect nothing.
"""
import os, struct, zlib, random
random.seed(10)
root=os.path.join(os.path.dirname(os.path.abspath(__file__)),'corpus')
def put(target, name, data):
    d=os.path.join(root,target); os.makedirs(d,exist_ok=True)
    if isinstance(data,str): data=data.encode()
    open(os.path.join(d,name),'wb').write(data)

# ---------- config
deploy=open(os.path.join(os.path.dirname(root),'..','deploy','edgepop.toml')).read()
put('config','ok-deploy-edgepop.toml',deploy)
minimal='[[listener]]\naddress = "127.0.0.1:8080"\n'
site='''[[listener]]
address = "127.0.0.1:8443"
tls = true
[[listener]]
address = "127.0.0.1:8080"
proxy-protocol = "required"
trusted-proxies = ["172.16.0.0/16", "fdaa::/16"]
[tls]
certs-dir = "/tmp/certs"
[upstream.app]
servers = ["127.0.0.1:3000"]
[[site]]
names = ["a.test", "*.wild.test"]
upstream = "app"
'''
cases={
 'empty.toml':'',
 'ok-certs-dir-refuse.toml':site.replace('[tls]\n','[tls]\ncerts-dir-insecure = "refuse"\n'),
 'bad-certs-dir-insecure.toml':site.replace('[tls]\n','[tls]\ncerts-dir-insecure = "maybe"\n'),
 'nested-arrays-deep.toml':'a = '+'['*20000+']'*20000+'\n',
 'nested-inline-deep.toml':'a = '+'{b = '*20000+'1'+'}'*20000+'\n',
 'ok-minimal.toml':minimal,
 'ok-site.toml':site,
 'bom.toml':'\ufeff'+minimal,
 'crlf.toml':site.replace('\n','\r\n'),
 'unknown-key.toml':minimal+'bogus = 1\n',
 'wrong-type.toml':'[[listener]]\naddress = 8080\n',
 'bad-address.toml':'[[listener]]\naddress = "999.1.1.1:99999"\n',
 'ipv6-address.toml':'[[listener]]\naddress = "[::1]:8080"\n',
 'bad-cidr.toml':'[[listener]]\naddress = "127.0.0.1:1"\nproxy-protocol = true\ntrusted-proxies = ["10.0.0.0/99", "fdaa::/200", "x"]\n',
 'dup-key.toml':'[[listener]]\naddress = "127.0.0.1:1"\naddress = "127.0.0.1:2"\n',
 'dup-table.toml':'[tls]\n[tls]\n'+minimal,
 'huge-int.toml':minimal+'[http]\nmax-body-size = 99999999999999999999999999\n',
 'neg-size.toml':minimal+'[cache]\nmemory = "-1MiB"\n',
 'size-overflow.toml':minimal+'[cache]\nmemory = "18446744073709551615GiB"\n',
 'duration-garbage.toml':minimal+'[cache]\nlock-timeout = "5 fortnights"\n',
 'duration-overflow.toml':minimal+'[cache]\nlock-timeout = "99999999999999999999999d"\n',
 'unicode-host.toml':site.replace('a.test','ä.test\u202e\u0000'),
 'empty-names.toml':site.replace('["a.test", "*.wild.test"]','[]'),
 'weird-wildcards.toml':site.replace('"*.wild.test"','"*", "**.x", "*.", ".", "a..b", "*.*.x"'),
 'unknown-upstream.toml':site.replace('upstream = "app"\n','upstream = "nope"\n'),
 'cache-key-template.toml':site+'[site.cache]\nkey = "$scheme$host$request_uri$$$"\n',
 'unterminated-string.toml':'[[listener]]\naddress = "127.0.0.1:1\n',
 'unterminated-table.toml':'[[listener\n',
 'nul-byte.toml':minimal+'x = "\x00"\n',
 'long-key.toml':minimal+('k'*20000)+' = 1\n',
 'many-sites.toml':site+''.join(f'[[site]]\nnames = ["s{i}.test"]\nupstream = "app"\n' for i in range(300)),
 'nested-arrays-64.toml':'a = '+'['*64+']'*64+'\n',
 'nested-inline-64.toml':'a = '+'{b = '*64+'1'+'}'*64+'\n',
 'datetime.toml':minimal+'when = 1979-05-27T07:32:00Z\n',
 'float-nan.toml':minimal+'[http]\nkeepalive-timeout = nan\n',
 'dotted-keys.toml':'tls.certs-dir.x = 1\n'+minimal,
 'array-of-tables-mix.toml':'listener = 1\n[[listener]]\naddress = "127.0.0.1:1"\n',
}
for k,v in cases.items(): put('config',k,v)
# a couple of test configs from the e2e files
import re,glob
n=0
for f in sorted(glob.glob('/work/main/tests/e2e/*.rs')):
    for m in re.finditer(r'r#"\n(\[.*?)"#', open(f).read(), re.S):
        t=m.group(1).replace('{{','{').replace('}}','}')
        t=re.sub(r'\{(https2?|http2?|admin)\}','127.0.0.1:1',t).replace('{certs}','/tmp/c').replace('{dir}','/tmp/d')
        put('config',f'e2e-{os.path.basename(f)[:-3]}-{n}.toml',t); n+=1
        if n>12: break

# ---------- proxy_header
SIG=b'\r\n\r\n\x00\r\nQUIT\n'
def v2(cmd, fam, addr, tlv=b''):
    body=addr+tlv
    return SIG+bytes([0x20|cmd, fam])+struct.pack('>H',len(body))+body
ip4=bytes([203,0,113,7,10,0,0,1])+struct.pack('>HH',5555,443)
ip6=bytes(range(16))+bytes(range(16,32))+struct.pack('>HH',1,2)
unix=b'/tmp/a'.ljust(108,b'\0')+b'/tmp/b'.ljust(108,b'\0')
ph={
 'ok-v1-tcp4':b'PROXY TCP4 198.51.100.9 10.0.0.1 4242 80\r\n',
 'ok-v1-tcp4-with-request':b'PROXY TCP4 198.51.100.9 10.0.0.1 4242 80\r\nGET / HTTP/1.1\r\n\r\n',
 'ok-v1-tcp6':b'PROXY TCP6 2001:db8::1 fdaa::2 4242 443\r\n',
 'ok-v1-unknown':b'PROXY UNKNOWN\r\n',
 'v1-unknown-with-addrs':b'PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n',
 'v1-partial':b'PROXY TCP4 198.51.',
 'v1-no-crlf-107':(b'PROXY TCP4 '+b'1'*96)[:107],
 'bad-v1-overlong':b'PROXY TCP4 '+b'9'*200+b'\r\n',
 'bad-v1-port':b'PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n',
 'bad-v1-ip':b'PROXY TCP4 1.2.3.999 5.6.7.8 1 80\r\n',
 'v1-family-mismatch':b'PROXY TCP4 2001:db8::1 5.6.7.8 1 80\r\n',
 'v1-lf-only':b'PROXY TCP4 1.2.3.4 5.6.7.8 1 80\n',
 'v1-nul':b'PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 80\r\n',
 'v1-lowercase':b'proxy TCP4 1.2.3.4 5.6.7.8 1 80\r\n',
 'v1-double-space':b'PROXY  TCP4 1.2.3.4 5.6.7.8 1 80\r\n',
 'v1-leading-zero-port':b'PROXY TCP4 1.2.3.4 5.6.7.8 0001 80\r\n',
 'ok-v2-tcp4':v2(1,0x11,ip4),
 'ok-v2-tcp4-with-request':v2(1,0x11,ip4)+b'GET / HTTP/1.1\r\n\r\n',
 'ok-v2-tcp6':v2(1,0x21,ip6),
 'v2-udp4':v2(1,0x12,ip4),
 'v2-unix':v2(1,0x31,unix),
 'ok-v2-local':v2(0,0x00,b''),
 'v2-local-with-addr':v2(0,0x11,ip4),
 'v2-unspec':v2(1,0x00,b''),
 'ok-v2-tlvs':v2(1,0x11,ip4,b'\x01\x00\x02h2'+b'\x02\x00\x06a.test'+b'\x20\x00\x05\x07\x00\x00\x00\x00'),
 'v2-tlv-overrun':v2(1,0x11,ip4,b'\x02\xff\xffabc'),
 'v2-short-addr':v2(1,0x11,ip4[:5]),
 'v2-len-lies':SIG+b'\x21\x11\xff\xff'+ip4,
 'v2-max-len':SIG+b'\x21\x11\xff\xff'+b'\0'*65535,
 'bad-v2-version':SIG+b'\x31\x11\x00\x0c'+ip4,
 'bad-v2-command':SIG+b'\x2f\x11\x00\x0c'+ip4,
 'v2-bad-family':SIG+b'\x21\xff\x00\x0c'+ip4,
 'v2-sig-only':SIG,
 'v2-partial-sig':SIG[:7],
 'v2-header-only':SIG+b'\x21\x11',
 'tls-client-hello':b'\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03'+bytes(32),
 'http-get':b'GET / HTTP/1.1\r\nHost: a.test\r\n\r\n',
 'empty':b'',
 'one-byte-P':b'P',
 'one-byte-CR':b'\r',
 'proxy-word-only':b'PROXY',
 'random-64':bytes(random.getrandbits(8) for _ in range(64)),
}
for k,v in ph.items(): put('proxy_header',k,v)

# ---------- cache_entry
def entry(primary=b'a.test/x', meta0=b'', meta1=b'', body=b'hello', h=bytes(range(16)), version=1, flags=0):
    hdr=b'EDGEPOPC'+struct.pack('<HHIIIQ',version,flags,len(primary),len(meta0),len(meta1),len(body))+h+primary
    hdr+=struct.pack('<I',zlib.crc32(hdr))
    e=hdr+meta0+meta1+body
    return e+struct.pack('<I',zlib.crc32(e))
good=entry(meta0=b'\x93\x00\x01\x02', meta1=b'HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n')
# pingora 0.9.1 CacheMeta::serialize() of a 200 with content-type, cache-control, content-length, etag (meta0:
# msgpack internal meta, meta1: zstd-compressed header), then of the same with a variance; printed once by a
# throwaway test over pingora::cache::CacheMeta. They let the fuzzer mutate real metas, not only the framing.
real_meta0=bytes.fromhex('990292ce6b49d23c0092ce6b49d2000092ce6b49d200000a1ec0c092ce6b49d20000')
real_meta0_variance=bytes.fromhex('990292ce6b49d23c0092ce6b49d2000092ce6b49d200000a1edc001066656463626139383736353433323130c092ce6b49d20000')
real_meta1=bytes.fromhex(
 '28b52ffd207e7d03004287191c608b73a8ceaf26d1e10849d9e2be45d64e46c1c2f2d7fc6711437ec1993221dc2ca2aced3bd340997b83'
 'fd1661e9b6cab18e0298f19ae851f622741859b5e3e54c05b578b4bc1bd03a56c373ee923bfacafa795c1df661e44c8884ae255025a024'
 '0a86390401009ab38528')
ce={
 'valid-garbage-meta':good,
 'valid-empty':entry(primary=b'',body=b''),
 'valid-empty-meta':entry(),
 'valid-big-body':entry(body=b'x'*4096),
 'valid-random-meta':entry(meta0=bytes(random.getrandbits(8) for _ in range(40)),meta1=bytes(random.getrandbits(8) for _ in range(40))),
 'valid-msgpack-like-meta':entry(meta0=b'\x95\xce\x00\x00\x00\x01\xce\x00\x00\x00\x02\xce\x00\x00\x00\x03\x00\x00',meta1=b'\x92\xcd\x00\xc8\x90'),
 'valid-real-meta':entry(meta0=real_meta0,meta1=real_meta1),
 'valid-real-meta-variance':entry(meta0=real_meta0_variance,meta1=real_meta1),
 'truncated-by-1':good[:-1],
 'truncated-header':good[:30],
 'truncated-at-crc':good[:52+8],
 'appended-byte':good+b'\0',
 'bad-magic':b'EDGEPOPX'+good[8:],
 'bad-version':entry(version=2),
 'version-0':entry(version=0),
 'flags-set':entry(flags=0xffff),
 'empty':b'',
 'magic-only':b'EDGEPOPC',
 'fixed-only':good[:48],
 'primary-len-huge':b'EDGEPOPC'+struct.pack('<HHIIIQ',1,0,0xffffffff,0,0,0)+bytes(16),
 'meta-len-huge':b'EDGEPOPC'+struct.pack('<HHIIIQ',1,0,0,0xffffffff,0xffffffff,0)+bytes(16),
 'body-len-max':b'EDGEPOPC'+struct.pack('<HHIIIQ',1,0,0,0,0,0xffffffffffffffff)+bytes(16),
 'body-len-cap':b'EDGEPOPC'+struct.pack('<HHIIIQ',1,0,0,0,0,0xffffffff*16)+bytes(16),
 'lengths-at-limits':b'EDGEPOPC'+struct.pack('<HHIIIQ',1,0,64*1024,4*1024*1024,4*1024*1024,0)+bytes(16),
}
for i in [0,9,13,30,47,48,55,56,60,len(good)-5,len(good)-1]:
    b=bytearray(good); b[i]^=0x01; ce[f'bitflip-{i}']=bytes(b)
# body flipped but trailing crc recomputed: header crc still fine → accepted (valid)
b=bytearray(good); b[-6]^=0xff; b=b[:-4]; ce['body-changed-crc-fixed']=bytes(b)+struct.pack('<I',zlib.crc32(bytes(b)))
# header changed, trailing crc recomputed, header crc stale → must be refused
b=bytearray(good); b[50]^=0xff; b=b[:-4]; ce['header-changed-only-trailing-crc-fixed']=bytes(b)+struct.pack('<I',zlib.crc32(bytes(b)))
for k,v in ce.items(): put('cache_entry',k,v)

# ---------- cert_pair
S=b'\n--8<--\n'
r=lambda f: open(f,'rb').read()
os.chdir(os.environ.get('SEED_KEYS', '.'))
ec,eck,rsa,rsak,oth,othk,ed,edk=[r(x) for x in ['ec.pem','ec.key','rsa.pem','rsa.key','other.pem','other.key','ed.pem','ed.key']]
cp={
 'ok-ec':ec+S+eck,
 'ok-ec-sec1-key':ec+S+r('ec_sec1.key'),
 'ok-rsa':rsa+S+rsak,
 'ok-rsa-pkcs1-key':rsa+S+r('rsa_pkcs1.key'),
 'ed25519':ed+S+edk,
 'bad-key-mismatch':ec+S+othk,
 'wrong-domain':oth+S+othk,
 'bad-swapped':eck+S+ec,
 'empty-both':S,
 'empty-key':ec+S,
 'empty-chain':S+eck,
 'truncated-chain':ec[:len(ec)//2]+S+eck,
 'truncated-key':ec+S+eck[:len(eck)//2],
 'chain-twice':ec+ec+S+eck,
 'chain-with-intermediate':ec+oth+S+eck,
 'key-twice':ec+S+eck+othk,
 'bad-base64':ec.replace(b'M',b'!',3)+S+eck,
 'key-bad-base64':ec+S+eck.replace(b'M',b'!',3),
 'der-garbage-in-pem':b'-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAKHHIG...\n-----END CERTIFICATE-----\n'+S+eck,
 'unterminated-pem':b'-----BEGIN CERTIFICATE-----\n'+ec.split(b'\n',1)[1][:200]+S+eck,
 'mismatched-pem-labels':ec.replace(b'END CERTIFICATE',b'END PRIVATE KEY')+S+eck,
 'encrypted-key-label':ec+S+eck.replace(b'PRIVATE KEY',b'ENCRYPTED PRIVATE KEY'),
 'crlf':ec.replace(b'\n',b'\r\n')+S+eck.replace(b'\n',b'\r\n'),
 'nul-bytes':ec+b'\0\0\0'+S+b'\0'+eck,
 'no-separator-halves':ec+eck,
 'huge-pem-line':b'-----BEGIN CERTIFICATE-----\n'+b'A'*100000+b'\n-----END CERTIFICATE-----\n'+S+eck,
 'cert-as-key':ec+S+ec,
 'key-as-cert':eck+S+eck,
 'random':bytes(random.getrandbits(8) for _ in range(300)),
}
for k,v in cp.items(): put('cert_pair',k,v)
print({t:len(os.listdir(os.path.join(root,t))) for t in os.listdir(root)})
