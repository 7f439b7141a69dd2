// Ray marching: a noise-displaced blob floating in front of a gradient backdrop.
float map(vec3 p) {
    float d = length(p) - 1.0;
    return d + (0.15 + 0.35 * P0.x) * (vnoise(p * (1.5 + 2.5 * P0.y) + iTime * 0.2) - 0.5);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec3 ro = vec3(0.0, 0.0, -3.2);
    vec3 rd = normalize(vec3(uv, 1.6));
    mat2 ry = rot(P0.z * TAU), rx = rot(P0.w - 0.5);
    ro.xz = ry * ro.xz; rd.xz = ry * rd.xz;
    ro.yz = rx * ro.yz; rd.yz = rx * rd.yz;
    float t = 1.5;
    bool hit = false;
    for (int i = 0; i < 40; i++) {
        float d = map(ro + rd * t);
        if (d < 0.002) { hit = true; break; }
        t += d * 0.8;
        if (t > 6.0) break;
    }
    vec3 col = ramp3(0.5 + 0.5 * uv.y, P3) * 0.7;
    if (hit) {
        vec3 p = ro + rd * t;
        vec2 e = vec2(0.02, 0.0);
        vec3 n = normalize(vec3(map(p + e.xyy) - map(p - e.xyy), map(p + e.yxy) - map(p - e.yxy), map(p + e.yyx) - map(p - e.yyx)));
        vec3 l = normalize(vec3(P2.x - 0.5, 0.8, -0.6));
        float diff = max(dot(n, l), 0.0);
        float spec = pow(max(dot(reflect(rd, n), l), 0.0), 8.0 + 40.0 * P2.y);
        float rim = pow(1.0 - max(dot(n, -rd), 0.0), 3.0);
        col = palette(dot(n, vec3(0.3, 0.5, 0.2)) + 0.5, P1, P2) * (0.2 + 0.8 * diff) + spec * P2.z + rim * 0.3 * P2.w;
    }
    fragColor = vec4(col, 1.0);
}
