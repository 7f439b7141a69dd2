// Noise: rising turbulence through a black-body-like colour ramp.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.xy;
    vec2 p = vec2(uv.x * (2.0 + 4.0 * P0.x), uv.y * (1.5 + 2.0 * P0.y));
    p.y -= iTime * (0.5 + P0.z);
    float t = 0.0, a = 0.5;
    vec2 q = p;
    for (int i = 0; i < 5; i++) { t += a * abs(gnoise(q)); q = rot(0.4) * q * 2.0 + 1.3; a *= 0.5; }
    float heat = clamp((1.0 - uv.y * (0.6 + 0.8 * P0.w)) * 1.6 - t * 1.4 + 0.3 * P2.x, 0.0, 1.0);
    vec3 hot = vec3(heat * 1.8, pow(heat, 1.6) * 1.4, pow(heat, 3.5));
    vec3 tint = hsv2rgb(vec3(P1.x, 0.6 * P1.y, 1.0));
    vec3 col = mix(hot, hot.bgr, step(0.75, P1.z)) * mix(vec3(1.0), tint, P1.w);
    fragColor = vec4(col + 0.06 * P2.yzw, 1.0);
}
