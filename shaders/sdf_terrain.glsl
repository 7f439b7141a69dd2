// Ray marching: a noise height field landscape with sky, sun and aerial perspective.
float height(vec2 p) {
    float h = 0.0, a = 1.0;
    mat2 m = rot(0.6) * 2.0;
    for (int i = 0; i < 3; i++) { h += a * vnoise(p); p = m * p; a *= 0.45 + 0.1 * P0.x; }
    return h * (1.0 + 1.5 * P0.y);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec3 ro = vec3(P0.z * 50.0, 0.0, iTime * 0.3 + P0.w * 50.0);
    ro.y = height(ro.xz) + 0.6 + 0.8 * P2.x;
    vec3 rd = normalize(vec3(uv.x, uv.y - 0.2 - 0.3 * P2.y, 1.5));
    rd.xz = rot(P2.z * TAU) * rd.xz;
    float t = 0.05;
    bool hit = false;
    for (int i = 0; i < 40; i++) {
        vec3 p = ro + rd * t;
        float d = p.y - height(p.xz);
        if (d < 0.002 * t) { hit = true; break; }
        t += 0.55 * d;
        if (t > 25.0) break;
    }
    vec3 sun = normalize(vec3(0.8, 0.4 + 0.4 * P2.w, 0.3));
    vec3 sky = mix(ramp3(0.9, P3), ramp3(0.55, P3), clamp(rd.y * 2.0, 0.0, 1.0));
    sky += pow(max(dot(rd, sun), 0.0), 32.0) * 0.6;
    vec3 col = sky;
    if (hit) {
        vec3 p = ro + rd * t;
        vec2 e = vec2(0.02, 0.0);
        vec3 n = normalize(vec3(height(p.xz - e.xy) - height(p.xz + e.xy), 2.0 * e.x, height(p.xz - e.yx) - height(p.xz + e.yx)));
        vec3 base = ramp3(clamp(p.y * 0.3, 0.0, 1.0), P1);
        base = mix(base, vec3(0.9), smoothstep(0.7, 0.9, n.y) * step(1.5 + 1.5 * P1.w, p.y));
        col = base * (0.2 + 0.8 * max(dot(n, sun), 0.0));
        col = mix(col, sky, 1.0 - exp(-t * 0.08));
    }
    fragColor = vec4(col, 1.0);
}
