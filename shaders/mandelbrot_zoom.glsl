// Escape time: the Mandelbrot set, zoomed onto a random point of the main cardioid's rim;
// the interior is coloured by the orbit's closest approach to the origin, the exterior by
// smooth escape time.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = centered(fragCoord);
    float t = P0.x * TAU;
    vec2 e1 = vec2(cos(t), sin(t)), e2 = vec2(cos(2.0 * t), sin(2.0 * t));
    vec2 centre = 0.5 * e1 - 0.25 * e2;  // on the cardioid's boundary
    float zoom = pow(10.0, -0.6 - 2.0 * P0.y);
    centre += (P0.zw - 0.5) * zoom * 0.4;  // the rim point stays in view
    vec2 c = centre + rot(P2.x * TAU + iTime * 0.02) * uv * zoom;
    vec2 z = vec2(0.0);
    float n = 0.0, trap = 1e9;
    const float N = 128.0;
    for (int i = 0; i < 128; i++) {
        z = vec2(z.x * z.x - z.y * z.y, 2.0 * z.x * z.y) + c;
        if (dot(z, z) > 256.0) break;
        trap = min(trap, length(z));
        n += 1.0;
    }
    vec3 col;
    if (n >= N) {
        col = ramp3(fract(trap * (2.0 + 6.0 * P2.z)), P2);
    } else {
        float sn = n - log2(log2(dot(z, z))) + 4.0;
        col = palette(sn * (0.05 + 0.12 * P2.y), P1, P3);
    }
    fragColor = vec4(col, 1.0);
}
