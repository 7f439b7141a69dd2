// Ray marching: a forest of rounded box pillars of random heights over a floor.
float map(vec3 p, out float id) {
    vec2 c = floor(p.xz / 2.0);
    vec2 q = mod(p.xz, 2.0) - 1.0;
    id = hash(ivec2(c));
    float h = 0.3 + 2.5 * id * (0.3 + 0.7 * P0.x);
    vec3 b = vec3(0.25 + 0.4 * P0.y, h, 0.25 + 0.4 * P0.y);
    vec3 d3 = abs(vec3(q.x, p.y - h, q.y)) - b + 0.1;
    float box = length(max(d3, 0.0)) + min(max(d3.x, max(d3.y, d3.z)), 0.0) - 0.1;
    float floorD = p.y;
    if (floorD < box) id = -1.0;
    return min(box, floorD);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec3 ro = vec3(2.0 * floor(P0.z * 20.0), 2.0 + 3.0 * P0.w, iTime * 0.5);  // x on a lane between pillars
    vec3 rd = normalize(vec3(uv, 1.3));
    rd.yz = rot(0.2 + 0.5 * P2.x) * rd.yz;
    rd.xz = rot(P2.y * TAU) * rd.xz;
    float t = 0.0, id = 0.0;
    for (int i = 0; i < 48; i++) {
        float d = map(ro + rd * t, id);
        if (d < 0.002 * t || t > 40.0) break;
        t += d;
    }
    vec3 sky = ramp3(0.7 + 0.3 * rd.y, P3);
    vec3 col = sky;
    if (t < 40.0) {
        vec3 p = ro + rd * t;
        float tmp;
        vec2 e = vec2(0.01, 0.0);
        vec3 n = normalize(vec3(map(p + e.xyy, tmp) - map(p - e.xyy, tmp), map(p + e.yxy, tmp) - map(p - e.yxy, tmp), map(p + e.yyx, tmp) - map(p - e.yyx, tmp)));
        vec3 l = normalize(vec3(0.6, 0.9, 0.3 * (P2.z - 0.5)));
        vec3 base = id < 0.0 ? ramp3(0.3, P1) * (0.6 + 0.4 * mod(floor(p.x) + floor(p.z), 2.0)) : palette(id, P1, P2);
        col = base * (0.2 + 0.8 * max(dot(n, l), 0.0));
        col = mix(col, sky, 1.0 - exp(-t * (0.02 + 0.05 * P2.w)));
    }
    fragColor = vec4(col, 1.0);
}
