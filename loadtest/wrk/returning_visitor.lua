-- wrk script: a fixed pool of addresses, visited round-robin; after the warm-up every request is a
-- returning visitor (an UPDATE of an existing row). 1000 addresses keep row-lock collisions
-- between concurrent requests rare, as with real returning visitors.
local pool = 1000
local requests = {}
local index = 0

function init(args)
  for i = 1, pool do
    local address = string.format("10.%d.%d.%d", math.floor(i / 65536), math.floor(i / 256) % 256, i % 256)
    requests[i] = wrk.format("GET", "/", { ["X-Forwarded-For"] = address })
  end
  index = math.random(0, pool - 1)
end

function request()
  index = index % pool + 1
  return requests[index]
end
