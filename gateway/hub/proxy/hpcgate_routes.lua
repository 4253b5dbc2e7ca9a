-- hpcgate-nginx's route table inside nginx (lua-nginx-module): route changes without a reload.
--
-- The hub (gateway/hub/proxy/nginx.py) keeps routes.json as the persisted truth and sends each
-- change to update() on the status listener, a unix socket only it can reach. The table lives in
-- the shared dict `hpcgate_routes`, which every worker reads and which survives a reload:
--   "<host><path>"  -> "<scheme>\t<address>\t<port>\t<target path>"  (host "" for host-less routes;
--                      the path decoded, as nginx matches locations, starting and ending with "/")
--   "#host <host>"  -> how many routes that host has
--   "#generation"   -> the generation the hub last sent
--   "#longest"      -> the length of the longest route path: no prefix longer is looked up
-- Keys and values never hold a control character: the hub refuses them in routespecs and targets.

local routes = ngx.shared.hpcgate_routes
local balancer = require "ngx.balancer"

local byte, sub, find, match = string.byte, string.sub, string.find, string.match
local tonumber, min = tonumber, math.min
local SLASH = 47

local _M = {}

-- The longest route for `uri` among `host`'s: first the URI plus "/" (a prefix's own URL, as
-- /user/alice for /user/alice/, like CHP's segment matching), then every prefix ending in "/",
-- none longer than `limit` (the longest route's path): a URI of 30,000 slashes cost seconds.
local function longest(host, uri, limit)
    local value
    local n = #uri
    if byte(uri, -1) ~= SLASH and n < limit then
        value = routes:get(host .. uri .. "/")
        if value then
            return value
        end
    end
    for i = min(n, limit), 1, -1 do
        if byte(uri, i) == SLASH then
            value = routes:get(host .. sub(uri, 1, i))
            if value then
                return value
            end
        end
    end
    return nil
end

-- access_by_lua: pick the route, set $hpcgate_scheme and $hpcgate_uri for proxy_pass and the
-- peer for balance().
function _M.access()
    local uri, host = ngx.var.uri, ngx.var.host
    local limit = routes:get("#longest") or 0
    local value
    if routes:get("#host " .. host) then
        -- A host with routes of its own falls back to the host-less "/" only (the hub).
        value = longest(host, uri, limit) or routes:get("/")
    else
        value = longest("", uri, limit)
    end
    if not value then
        return ngx.exec("@hpcgate_no_route")
    end
    local scheme, address, port, path = match(value, "^(%a+)\t([^\t]+)\t(%d+)\t(.*)$")
    local ctx = ngx.ctx
    ctx.hpcgate_address, ctx.hpcgate_port = address, tonumber(port)
    local vars = ngx.var
    vars.hpcgate_scheme = scheme
    -- The URI as the client sent it (CHP passes it on unchanged), after the target's own path.
    vars.hpcgate_uri = path .. vars.request_uri
end

-- balancer_by_lua: the peer access() chose. No retries: an unreachable server is a 502, which
-- the hub's error page answers.
function _M.balance()
    local ctx = ngx.ctx
    local ok, err = balancer.set_current_peer(ctx.hpcgate_address, ctx.hpcgate_port)
    if not ok then
        ngx.log(ngx.ERR, "hpcgate: cannot set the peer ", ctx.hpcgate_address, ": ", err)
        return ngx.exit(500)
    end
end

local function host_of(key)
    if byte(key, 1) == SLASH then
        return nil
    end
    return sub(key, 1, find(key, "/", 1, true) - 1)
end

local function path_length(key)
    local host = host_of(key)
    return #key - (host and #host or 0)
end

local function count_host(host, by)
    if not host then
        return true
    end
    local n, err = routes:incr("#host " .. host, by, 0)
    if not n then
        return nil, err
    end
    if n <= 0 then
        routes:delete("#host " .. host)
    end
    return true
end

local function fail(status, message)
    ngx.status = status
    ngx.header["Content-Type"] = "text/plain"
    ngx.say(message)
    return ngx.exit(status)
end

-- Apply the hub's lines, tab-separated:
--   "set", key, scheme, address, port, target path  (a route, new or replaced)
--   "del", key
--   "sync"            (the sets that follow are the whole table: every other route goes)
--   "generation", N   (last: what GET /_hpcgate_generation answers from now on)
-- true, or nil, an HTTP status and a message.
local function apply(body)
    local sync, seen, generation = false, {}, nil
    local longest_path = routes:get("#longest") or 0
    for line in body:gmatch("[^\n]+") do
        local op, rest = match(line, "^(%a+)\t?(.*)$")
        if op == "set" then
            local key, value = match(rest, "^([^\t]+)\t(%a+\t[^\t]+\t%d+\t.*)$")
            if not key then
                return nil, 400, "bad set line"
            end
            local length = path_length(key)
            if length > longest_path then  -- first: no request may stop short of the route
                longest_path = length
                routes:set("#longest", length)
            end
            local new = routes:get(key) == nil
            local ok, err = routes:safe_set(key, value)  -- never evicts another route
            if not ok then
                if err == "no memory" then
                    err = "the route table is full: raise NginxProxy.route_table_size"
                end
                return nil, 507, "cannot store the route: " .. err
            end
            if new then
                ok, err = count_host(host_of(key), 1)
                if not ok then
                    return nil, 507, "route table full (" .. err .. ")"
                end
            end
            seen[key] = true
        elseif op == "del" then
            if routes:get(rest) ~= nil then
                routes:delete(rest)
                count_host(host_of(rest), -1)
            end
        elseif op == "sync" then
            sync = true
        elseif op == "generation" then
            generation = tonumber(rest)
        else
            return nil, 400, "bad line"
        end
    end
    if sync then
        -- Routes the hub no longer has go; host counts are recounted from what stays, set before
        -- stale ones go (a request meanwhile never sees its host without routes).
        local hosts, stale, longest_seen = {}, {}, 1
        for _, key in ipairs(routes:get_keys(0)) do
            if sub(key, 1, 6) == "#host " then
                stale[#stale + 1] = key
            elseif byte(key, 1) ~= 35 then  -- not "#": a route
                if not seen[key] then
                    routes:delete(key)
                else
                    local host = host_of(key)
                    if host then
                        hosts[host] = (hosts[host] or 0) + 1
                    end
                    longest_seen = math.max(longest_seen, path_length(key))
                end
            end
        end
        for host, n in pairs(hosts) do
            local ok, err = routes:safe_set("#host " .. host, n)
            if not ok then
                return nil, 507, "route table full (" .. err .. ")"
            end
        end
        for _, key in ipairs(stale) do
            if not hosts[sub(key, 7)] then
                routes:delete(key)
            end
        end
        routes:set("#longest", longest_seen)  -- the routes that went may have been the longest
    end
    if generation then
        routes:set("#generation", generation)
    end
    return true
end

-- content_by_lua on the status listener: the hub POSTs lines for apply().
function _M.update()
    if ngx.req.get_method() ~= "POST" then
        return fail(405, "POST only")
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body then
        return fail(400, "no body (or larger than client_body_buffer_size)")
    end
    local ok, status, message = apply(body)
    if not ok then
        return fail(status, message)
    end
    ngx.header["Content-Type"] = "text/plain"
    ngx.say(routes:get("#generation") or "")
end

-- init_by_lua, in the master: a freshly started nginx serves the table the hub wrote for it
-- (`path`, lines for apply()) from its first request, before the hub sends anything. A reload
-- keeps the shared table as it is.
function _M.load(path)
    if routes:get("#generation") then
        return
    end
    local file = io.open(path, "rb")
    if not file then
        return
    end
    local body = file:read("*a")
    file:close()
    local ok, _, message = apply(body)
    if not ok then
        ngx.log(ngx.ERR, "hpcgate: the route table in ", path, " was refused: ", message)
    end
end

-- content_by_lua on the status listener: the generation the hub last sent, -1 before any.
function _M.generation()
    ngx.header["Content-Type"] = "text/plain"
    ngx.say(routes:get("#generation") or -1)
end

return _M
