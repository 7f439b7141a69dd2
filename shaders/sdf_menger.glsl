// Ray marching: a Menger sponge (three levels) seen from a random orbit.
float sdBox(vec3 p, vec3 b) { vec3 d = abs(p) - b; return length(max(d, 0.0)) + min(max(d.x, max(d.y, d.z)), 0.0); }
float map(vec3 p) {
    float d = sdBox(p, vec3(1.0));
    float s = 1.0;
    for (int i = 0; i < 3; i++) {
        vec3 a = mod(p * s, 2.0) - 1.0;
        s *= 3.0;
        vec3 r = abs(1.0 - 3.0 * abs(a));
        float da = max(r.x, r.y), db = max(r.y, r.z), dc = max(r.z, r.x);
        float c = (min(da, min(db, dc)) - 1.0) / s;
        d = max(d, c);
    }
    return d;
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float dist = 2.2 + 2.0 * P0.x;
    vec3 ro = vec3(0.0, 0.0, -dist);
    vec3 rd = normalize(vec3(uv, 1.5));
    mat2 ry = rot(P0.y * TAU + iTime * 0.05), rx = rot((P0.z - 0.5) * 1.4);
    ro.yz = rx * ro.yz; rd.yz = rx * rd.yz;
    ro.xz = ry * ro.xz; rd.xz = ry * rd.xz;
    float t = 0.0;
    bool hit = false;
    int steps = 0;
    for (int i = 0; i < 56; i++) {
        float d = map(ro + rd * t);
        if (d < 0.001) { hit = true; break; }
        t += d;
        steps = i;
        if (t > 8.0) break;
    }
    vec3 col = ramp3(0.2 + 0.3 * uv.y, P3);
    if (hit) {
        vec3 p = ro + rd * t;
        vec2 e = vec2(0.003, 0.0);
        vec3 n = normalize(vec3(map(p + e.xyy) - map(p - e.xyy), map(p + e.yxy) - map(p - e.yxy), map(p + e.yyx) - map(p - e.yyx)));
        vec3 l = normalize(vec3(P0.w - 0.5, 0.8, -0.5));
        float ao = 1.0 - float(steps) / 56.0;
        col = palette(dot(n, vec3(0.2, 0.5, 0.8)) + length(p) * 0.3, P1, P2) * (0.2 + 0.8 * max(dot(n, l), 0.0)) * (0.3 + 0.7 * ao);
    }
    fragColor = vec4(col, 1.0);
}
