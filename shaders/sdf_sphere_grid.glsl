// Ray marching: an endless grid of spheres of varying size, with diffuse light and fog.
float map(vec3 p, out float id) {
    vec3 c = floor(p / 2.0);
    vec3 q = mod(p, 2.0) - 1.0;
    id = hash(ivec3(c));
    return length(q) - (0.25 + 0.5 * id * (0.4 + 0.6 * P0.x));
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    vec3 ro = vec3(2.0 * floor(P0.yz * 10.0), iTime * 0.5);  // a lattice corner: never inside a sphere
    vec3 rd = normalize(vec3(uv, 1.2 + P0.w));
    rd.xz = rot(P2.x * TAU) * rd.xz;
    rd.yz = rot((P2.y - 0.5) * 1.5) * rd.yz;
    float t = 0.0, id = 0.0;
    for (int i = 0; i < 32; i++) {
        float d = map(ro + rd * t, id);
        if (d < 0.002 * t || t > 30.0) break;
        t += d;
    }
    vec3 sky = ramp3(0.1 + 0.3 * rd.y, P3);
    vec3 col = sky;
    if (t < 30.0) {
        vec3 p = ro + rd * t;
        float tmp;
        vec2 k = vec2(1.0, -1.0) * 0.01;  // four-tap (tetrahedral) gradient
        vec3 n = normalize(k.xyy * map(p + k.xyy, tmp) + k.yyx * map(p + k.yyx, tmp) + k.yxy * map(p + k.yxy, tmp) + k.xxx * map(p + k.xxx, tmp));
        vec3 l = normalize(vec3(cos(P2.z * TAU), 0.8, sin(P2.z * TAU)));
        vec3 base = palette(id, P1, P2);
        col = base * (0.15 + 0.85 * max(dot(n, l), 0.0));
        col = mix(col, sky, 1.0 - exp(-t * (0.03 + 0.1 * P2.w)));
    }
    fragColor = vec4(col, 1.0);
}
