-- wrk script: every request comes from an address never seen before (X-Forwarded-For, trusted
-- by the benchmark's gunicorn with TRUSTED_PROXY_HOPS=1). 2^30 addresses: repeats are negligible.

function init(args)
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1000000))
end

function request()
  local address = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255),
                                math.random(0, 255), math.random(1, 254))
  return wrk.format("GET", "/", { ["X-Forwarded-For"] = address })
end
