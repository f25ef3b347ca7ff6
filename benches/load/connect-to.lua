-- wrk script: connect to 127.0.0.1 whatever host the URL names, like curl --connect-to.
-- So `wrk -s connect-to.lua https://bench.test:PORT/` sends SNI and Host "bench.test" without /etc/hosts.
-- It defines no request/response functions, so wrk keeps its pre-built request (no Lua per request).
local target = os.getenv("WRK_CONNECT_TO") or "127.0.0.1"

function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup(target, service)
end
